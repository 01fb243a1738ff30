"""`python -m refcustom.train ...`: see train/cli.py."""

from .cli import main

raise SystemExit(main())
