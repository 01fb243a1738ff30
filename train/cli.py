"""Command line: `python -m refcustom.train <command>` (also installed as `refcustom-train`).

  train --config FILE [--max-steps N] [--set key.path=value ...] [--allow-config-change [KEY[,KEY]]]
        Train (resuming from the last checkpoint in output_dir if there is one) and export.
        Resume refuses a config that differs from the run's (output_dir, model.tiny_dir, data.cache,
        data.cache_dir, data.num_workers and run.* excepted) unless the changed keys, or a section
        holding them (stages, optim), are named with --allow-config-change; alone it accepts any change.
  export --config FILE [--out PATH] [--allow-config-change [KEY[,KEY]]]
        Export the last checkpoint without training further.
  print-config [--mode dreamo|aligngen]
        Print every option with its documentation, as a YAML file to start from.
  synthetic-data --out FOLDER [--count N] [--seed S] [--resolution R]
        Write the synthetic coloured-shapes dataset (the quick start and the benchmark use it).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml


def _overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes key.path=value, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _allowed(value: str | None) -> bool | list[str]:
    if value is None:
        return False
    return True if value == "*" else [key.strip() for key in value.split(",") if key.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refcustom.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train and export")
    train.add_argument("--config", required=True)
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps (checkpointed)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config option")
    export = commands.add_parser("export", help="export the last checkpoint")
    export.add_argument("--config", required=True)
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    export.add_argument("--out", default=None)
    for command in (train, export):
        command.add_argument("--allow-config-change", nargs="?", const="*", default=None, metavar="KEY[,KEY]",
                             help="resume even though these options (or sections, e.g. stages) changed; alone: any")
    show = commands.add_parser("print-config", help="print every option with its documentation")
    show.add_argument("--mode", default="dreamo", choices=["dreamo", "aligngen"])
    synthetic = commands.add_parser("synthetic-data", help="write the synthetic shapes dataset")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--count", type=int, default=32)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args(argv)

    if args.command == "print-config":
        from .config import default_config_text
        sys.stdout.write(default_config_text(args.mode))
        return 0
    if args.command == "synthetic-data":
        from .synthetic import write_shapes_dataset
        folder = write_shapes_dataset(args.out, args.count, args.seed, resolution=args.resolution,
                                      reference_resolution=args.resolution // 2)
        print(f"wrote {args.count} samples to {folder}")
        return 0

    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad configs, datasets and run folders raise these with a message that names the fix; a
        # traceback would bury it. REFCUSTOM_TRAIN_TRACEBACK=1 shows it for debugging.
        if os.environ.get("REFCUSTOM_TRAIN_TRACEBACK") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from .config import load_config
    from .trainer import Trainer

    config = load_config(args.config, _overrides(args.set))
    trainer = Trainer(config, allow_config_change=_allowed(args.allow_config_change))
    if args.command == "export":
        if not trainer.resume():
            raise ValueError(f"no checkpoint in {config.output_dir}/checkpoints to export: train first")
        path = trainer.export() if args.out is None else _export_to(trainer, args.out)
    else:
        path = trainer.train(max_steps=args.max_steps)
    if path is not None:
        print(f"exported {path}")
    return 0


def _export_to(trainer, out):
    trainer.config.run.export_name = None
    from pathlib import Path

    from .export import export_trained
    return export_trained(trainer.method, trainer.config, Path(out), str(trainer.model_path), "export")
