"""Download the model files the shipped workflows name into ComfyUI's models folder.

What goes where comes from scripts/weights_table.py (the README's weights table is the same table).
Run it with ComfyUI's Python, which has huggingface_hub:

    python scripts/fetch_weights.py                          # what workflows/dreamo_ip.json needs (the quick start)
    python scripts/fetch_weights.py --workflow dreamo_turbo --workflow aligngen_single_concept
    python scripts/fetch_weights.py --all --dry-run          # the files, folders, sizes, gated or not; no download
    python scripts/fetch_weights.py --models /data/ComfyUI/models --verify

--models defaults to the models/ folder of the ComfyUI host tests/comfy_host.py finds (COMFYUI_PATH,
the folder holding custom_nodes/ above this pack, ~/ComfyUI).

How a file is fetched: one HEAD request asks the hub for its size and ETag. A file already in place
with the hub's size is kept (--verify: and the hub's sha256, for LFS files); one of another size (an
interrupted copy) is deleted and fetched again. Downloads go through huggingface_hub's http_get into
`<target folder>/.refcustom-download/<name>.<etag>.part` and are renamed to the final name when
complete: one copy on disk, nothing in the hub cache. An interrupted download resumes from its .part
file (an HTTP Range request) when the command is run again. (hf_hub_download(local_dir=...) cannot do
that: huggingface_hub 2.x downloads into a per-process temporary file and deletes it on failure.)

Gated repositories (FLUX.1-dev and its VAE, FLUX.1-Kontext-dev, FLUX.1-Redux-dev): accept the licence
on the repository's page, then log in with the CLI installed next to this Python (`hf auth login`
with huggingface_hub >= 1.0) or set HF_TOKEN. AlignGen has no public weights: the fetcher says how to
train them and skips the file.

Exit status: 0 every selected file is in place; 1 a download failed; 2 bad arguments, no ComfyUI
found or no huggingface_hub; 3 the hub refused a gated or private file; 4 no network (or
HF_HUB_OFFLINE) and a file is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import runpy
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
STAGING = ".refcustom-download"
EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_OFFLINE = 1, 2, 3, 4
_load_module = runpy.run_path(str(HERE / "load_by_path.py"))["load_module"]


def _weights_table():
    name = "refcustom_weights_table"  # the name tests/server/scripts.py gives it: one module per process
    if name not in sys.modules:
        _load_module(name, HERE / "weights_table.py")
    return sys.modules[name]


table = _weights_table()


class FetchError(RuntimeError):
    """A failure the user can act on: `str(err)` is the one line to print, `code` the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Remote:
    """What the hub says about one file: where to GET it, its size and ETag (the sha256 for LFS files),
    and whether the token may go there (not to a CDN host the hub redirects to)."""

    url: str
    size: int | None
    etag: str
    send_token: bool


def gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB"


def login_command() -> str:
    """The login command of the hub CLI installed with this Python: `hf auth login` (huggingface_hub >= 1.0),
    else `huggingface-cli login` (older), looked up next to sys.executable first, then on PATH."""
    clis = (("hf", "auth login"), ("huggingface-cli", "login"))
    for cli, args in clis:
        beside = Path(sys.executable).parent / cli
        if beside.exists():
            return f"{beside} {args}"
    for cli, args in clis:
        if shutil.which(cli):
            return f"{cli} {args}"
    return f"{sys.executable} -c \"from huggingface_hub import login; login()\""


def has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _is_network_error(exc: BaseException) -> bool:
    """A connection or timeout error of the HTTP library huggingface_hub uses (httpx in 1.x, httpx2 in 2.x)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(c.__name__ in ("TransportError", "TimeoutException") and c.__module__.startswith("httpx")
               for c in type(exc).__mro__)


def explain(exc: BaseException, w) -> FetchError | None:
    """The one-line FetchError for a hub/network failure on entry `w`; None for anything else."""
    errors = importlib.import_module("huggingface_hub.errors")

    def error(name: str):  # names differ across huggingface_hub versions; () matches nothing
        return getattr(errors, name, ())

    if isinstance(exc, error("OfflineModeIsEnabled")):
        return FetchError("HF_HUB_OFFLINE is set: unset it to download", EXIT_OFFLINE)
    if _is_network_error(exc):
        from huggingface_hub import constants

        return FetchError(f"offline: cannot reach {constants.ENDPOINT} ({type(exc).__name__}: {exc})", EXIT_OFFLINE)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, error("GatedRepoError")) or (isinstance(exc, error("HfHubHTTPError")) and status in (401, 403)):
        if not has_token():
            who = f"then log in: {login_command()} (or set HF_TOKEN)"
        elif status == 401:
            who = f"your token (HF_TOKEN or the saved login) was refused: log in again: {login_command()}"
        else:
            who = "the account of your token (HF_TOKEN or the saved login) must be the one that accepted it"
        return FetchError(f"{w.repo} is gated ({status}): accept its licence at {w.page}; {who}", EXIT_REFUSED)
    if isinstance(exc, (error("RemoteEntryNotFoundError"), error("EntryNotFoundError"))) or status == 404:
        return FetchError(f"{w.repo} has no {w.path} (404): scripts/weights_table.py needs updating", EXIT_FAILED)
    return None


def remote(w) -> Remote:
    """One HEAD request for `w`'s size and ETag (huggingface_hub.get_hf_file_metadata)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(w.repo, w.path, revision=table.REVISION)
    meta = get_hf_file_metadata(url)
    if not meta.etag:
        raise FetchError(f"{url}: the hub sent no ETag; is HF_ENDPOINT a Hugging Face hub?", EXIT_FAILED)
    location = meta.location or url
    same_origin = [urlparse(u)[:2] for u in (url, location)]
    return Remote(location, meta.size, meta.etag, same_origin[0] == same_origin[1])


def is_sha256(etag: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{64}", etag) is not None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def wrong_in_place(target: Path, rem: Remote, verify: bool) -> str | None:
    """Why the existing `target` is not the hub's file (None: it is, as far as size and --verify tell)."""
    size = target.stat().st_size
    if rem.size is not None and size != rem.size:
        return f"{size} bytes, the hub's file has {rem.size}"
    if verify and is_sha256(rem.etag) and sha256(target) != rem.etag:
        return "its sha256 differs from the hub's"
    return None


def download(w, rem: Remote, target: Path, verify: bool) -> None:
    """GET `rem` into the staging .part file next to `target` (resuming it), then rename it to `target`."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    staging = target.parent / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    stem = target.name
    part = staging / f"{stem}.{re.sub(r'[^0-9A-Za-z]', '', rem.etag)[:16]}.part"
    for stale in staging.glob(f"{stem}.*.part"):  # an earlier version of the file: never resumed
        if stale != part:
            stale.unlink()
    have = part.stat().st_size if part.exists() else 0
    if rem.size is not None and have > rem.size:
        part.unlink()
        have = 0
    need = (rem.size or 0) - have
    free = shutil.disk_usage(staging).free
    if need > free:
        raise FetchError(f"{w.relpath}: {gb(need)} to download, only {gb(free)} free in {staging}", EXIT_FAILED)
    if have:
        print(f"  resuming at {gb(have)} of {gb(rem.size or have)}", flush=True)
    headers = build_hf_headers(token=None if rem.send_token else False)
    try:
        with part.open("ab") as f:
            http_get(rem.url, f, resume_size=have, headers=headers, expected_size=rem.size, displayed_filename=w.name)
    except OSError as exc:
        if _is_network_error(exc):  # the .part file is kept: the next run resumes it
            raise
        part.unlink(missing_ok=True)  # huggingface_hub's size check after the download: wrong, not short
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FetchError(f"{w.relpath}: {first_line} Run again to download it anew.", EXIT_FAILED) from None
    if verify and is_sha256(rem.etag) and sha256(part) != rem.etag:
        part.unlink()
        raise FetchError(f"{w.relpath}: the download's sha256 differs from the hub's; run again", EXIT_FAILED)
    os.replace(part, target)
    try:
        staging.rmdir()
    except OSError:
        pass  # other downloads in progress there


def default_models() -> Path:
    """<ComfyUI>/models of the host tests/comfy_host.py finds; without tests/ (a registry install), the
    ComfyUI folder holding custom_nodes/ above this pack."""
    host_file = REPO_ROOT / "tests" / "comfy_host.py"
    if host_file.is_file():
        host = _load_module("refcustom_comfy_host", host_file, register=False)
        try:
            root = host.find_comfyui()
        except host.ComfyUINotFound as exc:
            raise FetchError(str(exc), EXIT_USAGE) from None
    else:
        parent = REPO_ROOT.parent
        root = parent.parent if parent.name == "custom_nodes" and (parent.parent / "main.py").is_file() else None
    if root is None:
        raise FetchError("ComfyUI not found: pass --models <ComfyUI>/models (or set COMFYUI_PATH)", EXIT_USAGE)
    return Path(root) / "models"


def print_plan(entries, models: Path) -> None:
    """The --dry-run table: status, file, size, gated, source; totals."""
    print(f"models folder: {models}")
    print(f"{'':8}{'file (under models/)':58}{'approx. size':24}{'gated':7}source")
    missing = 0
    for w in entries:
        there = (models / w.relpath).exists()
        missing += 0 if there else (w.approx_mb or 0)
        print(f"{'have' if there else 'fetch':8}{w.relpath:58}{w.size_label:24}{'yes' if w.gated else 'no':7}"
              f"{w.repo}/{w.path}")
    total = sum(w.approx_mb or 0 for w in entries)
    print(f"total ~{total / 1000:.1f} GB, ~{missing / 1000:.1f} GB of it not in place (approximate sizes)")


def print_gated(entries, models: Path) -> None:
    """Before downloading: the gated repositories of the files not in place yet, and how to log in."""
    repos: dict[str, list[str]] = {}
    for w in entries:
        if w.gated and not (models / w.relpath).exists():
            repos.setdefault(w.repo, []).append(w.name)
    if not repos:
        return
    for repo, names in repos.items():
        print(f"gated: {repo} ({', '.join(names)}): accept the licence at {table.HUB}/{repo}")
    if has_token():
        print("  a hub token is set (HF_TOKEN or a saved login): its account must have accepted the licence")
    else:
        print(f"  not logged in: run `{login_command()}` (or set HF_TOKEN) first")


def fetch(entries, models: Path, verify: bool) -> int:
    """Bring every entry to models/<folder>/<name>. Returns the exit status."""
    print_gated(entries, models)
    fetched, kept, missing, refused, worst = 0, 0, [], set(), 0
    offline: FetchError | None = None
    for w in entries:
        target = models / w.folder / w.name
        if offline or w.repo in refused:  # one line per cause: no request, no message for the rest
            if target.exists():
                kept += 1
            else:
                missing.append(w.relpath)
            continue
        try:
            rem = remote(w)
            why = wrong_in_place(target, rem, verify) if target.exists() else None
            if target.exists() and why is None:
                print(f"have    {w.relpath}")
                kept += 1
                continue
            if why:
                print(f"redo    {w.relpath}: {why}; deleting it", flush=True)
                target.unlink()
            print(f"fetch   {w.relpath} <- {w.repo}/{w.path} ({gb(rem.size) if rem.size else 'size unknown'})",
                  flush=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            download(w, rem, target, verify)
            fetched += 1
        except KeyboardInterrupt:
            print(f"\ninterrupted: run the same command again to resume {w.relpath}")
            return 130
        except Exception as exc:  # sorted into one line per failure; anything else is re-raised
            err = exc if isinstance(exc, FetchError) else explain(exc, w)
            if err is None:
                raise
            if err.code == EXIT_OFFLINE:
                offline = err
            elif err.code == EXIT_REFUSED:
                refused.add(w.repo)
            if target.exists():  # gated or offline, but a file is there: keep it unchecked
                print(f"keep    {w.relpath} (not checked: {err})")
                kept += 1
                continue
            if err.code != EXIT_OFFLINE:
                print(f"error   {err}", file=sys.stderr)
            missing.append(w.relpath)
            worst = max(worst, err.code)
    if offline and missing:
        print(f"{offline}; missing: {', '.join(missing)}. Run again when the hub is reachable.", file=sys.stderr)
        return EXIT_OFFLINE
    if offline:
        print(f"{offline}: the {kept} files in place were not checked against the hub")
    print(f"fetched {fetched}, kept {kept}" + (f", missing {len(missing)}" if missing else "") + f" in {models}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", action="append", metavar="NAME",
                        help=f"fetch what this workflow needs (repeatable; default {table.QUICK_START}); "
                             f"one of: {', '.join(table.EVERY)}")
    parser.add_argument("--all", action="store_true", help="every file any shipped workflow names")
    parser.add_argument("--models", type=Path, help="ComfyUI's models folder (default: the ComfyUI host's)")
    parser.add_argument("--verify", action="store_true", help="also compare sha256 with the hub's (LFS files)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and the total size")
    args = parser.parse_args(argv)
    if args.all and args.workflow:
        parser.error("--all and --workflow exclude each other")
    try:
        entries = list(table.WEIGHTS) if args.all else table.for_workflows(args.workflow or [table.QUICK_START])
    except ValueError as exc:
        parser.error(str(exc))
    try:
        models = (args.models.expanduser() if args.models else default_models()).resolve()
        for w in entries:
            if w.repo is None:
                print(f"skip    {w.relpath}: no public weights; train them ({table.TRAIN_ALIGNGEN}) and copy the "
                      f"exported {w.name} to {models / w.folder}/")
        entries = [w for w in entries if w.repo is not None]
        if args.dry_run:
            print_plan(entries, models)
            return 0
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            raise FetchError(f"huggingface_hub is not installed for {sys.executable}: run this with ComfyUI's "
                             "Python, or pip install huggingface_hub", EXIT_USAGE) from None
        return fetch(entries, models, args.verify)
    except FetchError as err:
        print(f"error   {err}", file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
