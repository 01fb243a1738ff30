"""The weights table (scripts/weights_table.py) against what ships, and the fetcher against a fake hub
(tier 2: it runs the real scripts with the host's Python and its huggingface_hub).

The oracles are independent of the code under test: the workflow files themselves (which loader widget
names which file, and the folder ComfyUI's loaders read it from), the README's table as a reader sees it,
and, for scripts/fetch_weights.py, the real huggingface_hub talking to a small local HTTP server that
answers like the hub: HEAD /{repo}/resolve/{revision}/{file} with X-Repo-Commit, ETag or X-Linked-Etag and
X-Linked-Size, LFS files redirected to a CDN on another origin, Range requests answered 206, a gated repo
answered 403 with X-Error-Code GatedRepo.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from refcustom.tests.comfy_host import REPO_ROOT

from .scripts import load_script

pytestmark = pytest.mark.tier2

table = load_script("weights_table.py")
WORKFLOWS = REPO_ROOT / "workflows"
FETCHER = REPO_ROOT / "scripts" / "fetch_weights.py"
MODEL_SUFFIXES = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")

# The folders ComfyUI's loaders (and this pack's, nodes/model_folders.py: their own folder, then loras/)
# read each file widget from. A loader missing here fails the test: add it with its folders.
LOADER_FOLDERS = {
    ("UNETLoader", "unet_name"): {"diffusion_models"},
    ("DualCLIPLoader", "clip_name1"): {"text_encoders"},
    ("DualCLIPLoader", "clip_name2"): {"text_encoders"},
    ("CLIPLoader", "clip_name"): {"text_encoders"},
    ("VAELoader", "vae_name"): {"vae"},
    ("StyleModelLoader", "style_model_name"): {"style_models"},
    ("CLIPVisionLoader", "clip_name"): {"clip_vision"},
    ("LoraLoader", "lora_name"): {"loras"},
    ("LoraLoaderModelOnly", "lora_name"): {"loras"},
    ("RefCustom_AlignGenLoader", "aligngen_file"): {"aligngen", "loras"},
    **{("RefCustom_DreamOLoader", k): {"dreamo", "loras"}
       for k in ("dreamo_file", "embedding_file", "cfg_distill_lora", "sft_lora", "dpo_lora", "quality_pos_lora",
                 "quality_neg_lora")},
    ("RefCustom_DreamOLoader", "turbo_lora"): {"loras", "dreamo"},
}


def is_model_file(value) -> bool:
    return isinstance(value, str) and value.endswith(MODEL_SUFFIXES)


def api_files() -> dict[str, dict]:
    """file name -> {"folders": allowed folders, "workflows": names} over workflows/api/*.json."""
    found: dict[str, dict] = {}
    for path in sorted((WORKFLOWS / "api").glob("*.json")):
        for node in json.loads(path.read_text()).values():
            for key, value in node["inputs"].items():
                if not is_model_file(value):
                    continue
                folders = LOADER_FOLDERS.get((node["class_type"], key))
                assert folders, f"{path.name}: {node['class_type']}.{key} = {value}: which folder? (LOADER_FOLDERS)"
                entry = found.setdefault(value, {"folders": folders, "workflows": set()})
                entry["workflows"].add(path.stem)
    return found


def test_every_file_a_workflow_names_is_in_the_table_once_with_its_folder_and_workflows():
    names = [w.name for w in table.WEIGHTS]
    assert len(names) == len(set(names)), "a file is in the table twice"
    assert set(table.EVERY) == {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    named = api_files()
    assert "flux1-kontext-dev.safetensors" in named  # the Kontext workflow's model, once missing from the fetcher
    assert sorted(named) == sorted(names), "table rows and the files the workflows name differ"
    for name, seen in named.items():
        w = table.BY_NAME[name]
        assert w.folder in seen["folders"], f"{name}: table folder {w.folder}, the loader reads {seen['folders']}"
        assert set(w.workflows) == seen["workflows"], f"{name}: table says {w.workflows}, used by {seen['workflows']}"


def test_the_ui_workflows_download_links_are_the_tables():
    declared = 0
    for path in sorted(WORKFLOWS.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            files = {v for v in node.get("widgets_values") or [] if is_model_file(v)}
            models = node.get("properties", {}).get("models", [])
            for model in models:
                w = table.BY_NAME.get(model["name"])
                assert w is not None, f"{path.name}: node {node['id']} declares {model['name']}, not in the table"
                assert (model["directory"], model["url"]) == (w.folder, w.url), f"{path.name}: {model}"
                assert model["url"] == f"https://huggingface.co/{w.repo}/resolve/main/{w.path}"
            for name in files:
                assert name in table.BY_NAME, f"{path.name}: node {node['id']} names {name}, not in the table"
            downloadable = {n for n in files if table.BY_NAME[n].url}
            assert {m["name"] for m in models} == downloadable, f"{path.name}: node {node['id']} {node['type']}"
            declared += len(models)
    assert declared > 0


def test_each_workflows_note_names_its_files_where_the_table_puts_them():
    for path in sorted(WORKFLOWS.glob("*.json")):
        nodes = json.loads(path.read_text())["nodes"]
        note = "\n".join(n["widgets_values"][0] for n in nodes if n["type"] in ("Note", "MarkdownNote"))
        for node in nodes:
            for name in {v for v in node.get("widgets_values") or [] if is_model_file(v)}:
                assert table.BY_NAME[name].relpath in note, f"{path.name}: the note does not say models/{name}'s folder"


def readme_weights_rows() -> list[list[str]]:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"^## Weights and hardware\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Weights and hardware' section"
    rows, in_table = [], False
    for line in match.group(1).splitlines():
        if line.startswith("| file"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and not line.startswith("|---"):
            rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    return rows


def test_the_readme_weights_table_lists_exactly_the_tables_files():
    rows = readme_weights_rows()
    assert sorted(r[0] for r in rows) == sorted(f"{w.folder}/{w.name}" for w in table.WEIGHTS)
    for row in rows:
        w = table.BY_NAME[row[0].split("/", 1)[1]]
        gated = "yes" in row[3]
        assert gated == w.gated, f"README says gated={gated} for {row[0]}"
        assert (w.repo or "train") in row[2], f"README's source for {row[0]}: {row[2]}"


def test_the_quick_start_sentence_names_the_fetcher_and_login():
    text = (REPO_ROOT / "README.md").read_text()
    assert "hf auth login" in text and "huggingface-cli login" not in text


# ---- the fetcher against a fake hub ----

COMMIT = "a" * 40


class FakeHub:
    """Two loopback HTTP servers: `hub` answers /{repo}/resolve/main/{file} like huggingface.co (LFS files
    redirected to `cdn`, another origin, as the real hub redirects to its CDN); `cdn` serves the bytes with
    Range support. `log` records (server, method, path, Range, Authorization) of every request."""

    def __init__(self, files: dict[tuple[str, str], bytes], lfs: set[tuple[str, str]], gated: set[str]):
        self.files, self.lfs, self.gated = files, lfs, gated
        self.blobs = {hashlib.sha256(data).hexdigest(): data for data in files.values()}
        self.log: list[tuple[str, str, str, str | None, str | None]] = []
        self.hold: dict[str, tuple[int, threading.Event]] = {}  # sha -> (bytes to send, then wait for the event)
        self.hub = self._server("hub")
        self.cdn = self._server("cdn")

    def _server(self, role):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body):
                hub.log.append((role, self.command, unquote(self.path), self.headers.get("Range"),
                                self.headers.get("Authorization")))
                if role == "hub":
                    self.resolve(body)
                else:
                    data = hub.blobs.get(self.path.rsplit("/", 1)[-1])
                    if data is None:
                        return self.send(404, {}, b"")
                    self.content(data, body, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"'})

            def resolve(self, body):
                parts = unquote(self.path).lstrip("/").split("/")
                repo, file = "/".join(parts[:2]), "/".join(parts[4:])
                if parts[2:4] != ["resolve", "main"]:
                    return self.send(404, {"X-Error-Code": "RevisionNotFound"}, b"")
                if repo in hub.gated:
                    message = f"Access to model {repo} is restricted and you are not in the authorized list."
                    return self.send(403, {"X-Error-Code": "GatedRepo", "X-Error-Message": message},
                                     json.dumps({"error": message}).encode() if body else b"")
                data = hub.files.get((repo, file))
                if data is None:
                    return self.send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"")
                sha = hashlib.sha256(data).hexdigest()
                if (repo, file) in hub.lfs:
                    return self.send(302, {"Location": f"{hub.cdn.url}/blobs/{sha}", "X-Repo-Commit": COMMIT,
                                           "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                           "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, b"")
                self.content(data, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})

            def content(self, data, body, headers):
                start, status = 0, 200
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start, status = int(match.group(1)), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                headers["Accept-Ranges"] = "bytes"
                self.send(status, headers, data[start:] if body else b"", length=len(data) - start)

            def send(self, status, headers, payload, length=None):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                self.end_headers()
                held = hub.hold.get(self.path.rsplit("/", 1)[-1]) if self.command == "GET" else None
                try:
                    if held and len(payload) > held[0]:
                        self.wfile.write(payload[:held[0]])
                        self.wfile.flush()
                        held[1].wait(60)
                        payload = payload[held[0]:]
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def requests(self, server=None, method=None):
        return [e for e in self.log if (server is None or e[0] == server) and (method is None or e[1] == method)]

    def close(self):
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()


def contents(big: int = 0) -> dict[tuple[str, str], bytes]:
    """Bytes for every downloadable table entry (distinct, small; flux1-dev `big` bytes if given)."""
    rng = random.Random(17)
    files = {}
    for i, w in enumerate(table.WEIGHTS):
        if w.repo:
            size = big if (big and w.name == "flux1-dev.safetensors") else 3000 + 911 * i
            files[(w.repo, w.path)] = rng.randbytes(size)
    return files


@pytest.fixture
def fake_hub():
    pytest.importorskip("huggingface_hub")
    hubs = []

    def make(big=0, gated=()):
        files = contents(big)
        lfs = {key for key in files if key[1] != "clip_l.safetensors"}  # clip_l served as a plain git file
        hub = FakeHub(files, lfs, set(gated))
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()


def fetcher_env(tmp_path, endpoint, token=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "HUGGING_FACE_HUB_TOKEN"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf_home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")  # the fake hub, never via a proxy
    if token:
        env["HF_TOKEN"] = token
    return env


def run_fetcher(tmp_path, endpoint, *args, token=None, wait=True):
    cmd = [sys.executable, str(FETCHER), "--models", str(tmp_path / "models"), *args]
    if not wait:
        return subprocess.Popen(cmd, env=fetcher_env(tmp_path, endpoint, token), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=fetcher_env(tmp_path, endpoint, token), capture_output=True, text=True,
                          timeout=120)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def expected(hub, workflow="dreamo_ip") -> dict[str, bytes]:
    return {w.relpath: hub.files[(w.repo, w.path)] for w in table.for_workflows([workflow]) if w.repo}


def test_a_fresh_download_lands_in_place_once_and_is_not_fetched_again(tmp_path, fake_hub):
    hub = fake_hub()
    result = run_fetcher(tmp_path, hub.hub.url, token="hf_fake_token")
    assert result.returncode == 0, result.stdout + result.stderr
    want = expected(hub)
    assert "diffusion_models/flux1-dev.safetensors" in want and "dreamo/v1.1/dreamo_dpo_lora.safetensors" in want
    assert files_under(tmp_path / "models") == want  # right bytes, and no second copy or leftover anywhere
    assert not (tmp_path / "hf_home" / "hub").exists() or not any((tmp_path / "hf_home" / "hub").rglob("*.*"))
    # the token goes to the hub, never to the CDN it redirects to
    assert {e[4] for e in hub.requests("hub")} == {"Bearer hf_fake_token"}
    assert {e[4] for e in hub.requests("cdn")} == {None}
    assert len(hub.requests(method="GET")) == len(want)

    before = len(hub.requests(method="GET"))
    again = run_fetcher(tmp_path, hub.hub.url, token="hf_fake_token")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(hub.requests(method="GET")) == before, "a complete file was downloaded again"
    assert again.stdout.count("have ") == len(want)


def test_a_truncated_file_is_downloaded_again(tmp_path, fake_hub):
    hub = fake_hub()
    want = expected(hub)
    truncated = tmp_path / "models" / "dreamo" / "dreamo.safetensors"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(want["dreamo/dreamo.safetensors"][:1000])
    result = run_fetcher(tmp_path, hub.hub.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_under(tmp_path / "models") == want
    sha = hashlib.sha256(want["dreamo/dreamo.safetensors"]).hexdigest()
    assert [e for e in hub.requests("cdn", "GET") if e[2].endswith(sha)], "the truncated file was kept"


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, fake_hub):
    big = 24 * 2**20  # more than huggingface_hub's 10 MB write chunk, so part of it reaches the disk
    hub = fake_hub(big=big)
    data = hub.files[("black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors")]
    release = threading.Event()
    hub.hold[hashlib.sha256(data).hexdigest()] = (big // 2, release)
    models = tmp_path / "models"
    process = run_fetcher(tmp_path, hub.hub.url, wait=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = [p for p in models.rglob("*") if p.is_file() and p.stat().st_size >= 10 * 2**20]
            if partial:
                break
            time.sleep(0.1)
        assert partial, "no partial download appeared"
        process.send_signal(signal.SIGKILL)  # an interruption that leaves no chance to clean up
        process.wait(30)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
    written = partial[0].stat().st_size
    assert not (models / "diffusion_models" / "flux1-dev.safetensors").exists()
    del hub.hold[hashlib.sha256(data).hexdigest()]

    result = run_fetcher(tmp_path, hub.hub.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_under(models) == expected(hub)
    ranges = [e[3] for e in hub.requests("cdn", "GET") if e[2].endswith(hashlib.sha256(data).hexdigest())]
    assert ranges[-1] == f"bytes={written}-", f"the second run did not resume: {ranges}"


def test_a_gated_repo_gives_the_login_line_and_a_failing_exit(tmp_path, fake_hub):
    hub = fake_hub(gated={"black-forest-labs/FLUX.1-dev"})
    result = run_fetcher(tmp_path, hub.hub.url)
    assert result.returncode != 0
    cli = Path(sys.executable).parent / "hf"
    login = f"{cli} auth login" if cli.exists() else "auth login"
    assert "gated" in result.stdout and login in result.stdout  # said before downloading
    refusal = [line for line in result.stderr.splitlines() if "gated" in line]
    assert len(refusal) == 1, result.stderr
    assert "https://huggingface.co/black-forest-labs/FLUX.1-dev" in refusal[0] and login in refusal[0]
    assert len(hub.requests("hub", "HEAD")) == len(expected(hub)) - 1  # the second gated file is not asked
    got = files_under(tmp_path / "models")
    assert "text_encoders/t5xxl_fp16.safetensors" in got and "diffusion_models/flux1-dev.safetensors" not in got


def test_offline_is_one_line_and_a_failing_exit(tmp_path):
    pytest.importorskip("huggingface_hub")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_fetcher(tmp_path, f"http://127.0.0.1:{port}")
    assert result.returncode == 4, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "offline" in lines[0], result.stderr


def test_dry_run_lists_files_sizes_gated_and_total_without_network(tmp_path):
    result = run_fetcher(tmp_path, "http://127.0.0.1:9", "--all", "--dry-run")
    assert result.returncode == 0, result.stderr
    for w in table.WEIGHTS:
        if w.repo:
            assert re.search(rf"{re.escape(w.relpath)}\s+{re.escape(w.size_label)}\s+{'yes' if w.gated else 'no'}",
                             result.stdout), w.relpath
    assert "aligngen/aligngen_lora.safetensors" in result.stdout and "python -m refcustom.train" in result.stdout
    assert re.search(r"total ~\d+\.\d GB", result.stdout)


def test_an_unknown_workflow_is_refused_with_the_names(tmp_path):
    result = run_fetcher(tmp_path, "http://127.0.0.1:9", "--workflow", "dreamo_nope")
    assert result.returncode == 2 and "dreamo_ip" in result.stderr
