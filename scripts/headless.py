#!/usr/bin/env python3
"""Headless ComfyUI: start a server on loopback, queue API-format workflows, fetch the images. Stdlib only (but Pillow, ComfyUI's own, to rewrite a PNG's workflow chunks).

As a library (the server tests load this file by path):

    server = start_server(comfy_root, base_dir, extra_env={"REFCUSTOM_TEST_FIXTURES": "1"})
    try:
        entry = server.run(substitute_fixture_loaders(api_graph), timeout=300)   # queue + wait
        pngs = server.images(entry)
    finally:
        server.stop()

- `start_server` prepares `base_dir` (ComfyUI's --base-directory: models/, input/, output/, user/ and
  custom_nodes/ all live there, so the pack is linked in as custom_nodes/refcustom), picks a free
  loopback port, logs to base_dir/server.log and waits for /system_stats. If the process dies first,
  the error carries the log's tail.
- `Server.queue` raises `PromptRejected` (with ComfyUI's `node_errors`) on HTTP 400; `Server.wait` raises
  `PromptFailed` (node id, node type, exception message, traceback) when execution fails, and
  `ServerDied` if the server exits meanwhile. Every wait is bounded.
- `substitute_fixture_loaders` swaps UNETLoader / CheckpointLoaderSimple / (Dual)CLIPLoader / VAELoader / StyleModelLoader / CLIPVisionLoader for
  the pack's tiny-model fixture nodes (tests/fixture_pack, linked next to the pack when REFCUSTOM_TEST_FIXTURES=1); UNETLoader's fp8
  weight_dtype carries over.

As a command:

    python scripts/headless.py run workflows/api/x.json --out out/ [--tiny] [--comfyui PATH]

runs one API-format workflow on a fresh server (temporary base directory) and writes its output images
to --out. Each PNG carries the workflow file as given, not the graph that ran after --tiny/--shrink: its
`prompt` chunk is the file, its `workflow` chunk the shipped UI twin when there is one (workflows/<name>.json
for workflows/api/<name>.json), so dropping it on a normal ComfyUI gives back the real workflow. Without --tiny
the server's models/ is the host's models folder (or --models). --tiny registers
the fixture nodes, substitutes the loaders and writes the tiny official DreamO files
(tests/fixtures/dreamo_files.py) into a fresh models/ folder instead; --shrink makes the graph
smoke-test sized. workflows/inputs/ is copied into the server's input/ folder either way.
Real weights run on ComfyUI's own device choice (the GPU when the host's torch sees one; `--device cpu`
forces the CPU) and wait up to an hour; --tiny runs on the CPU. While the prompt runs, the server's log
(model loads, the sampler's progress bar) is echoed to stderr (--quiet turns that off).

scripts/build_workflows.py starts its /object_info server with `start_server` too: this file is the one
server helper of the scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# By path: this file is run as a command and loaded by path (tests), so scripts/ need not be on sys.path.
load_module = runpy.run_path(str(REPO_ROOT / "scripts" / "load_by_path.py"))["load_module"]
PACK_NAME = "refcustom"
FIXTURES_ENV = "REFCUSTOM_TEST_FIXTURES"
WORKFLOW_INPUTS = REPO_ROOT / "workflows" / "inputs"
LOOPBACK = "127.0.0.1"

FIXTURE_FLUX = "RefCustomTest_TinyFluxLoader"
FIXTURE_CLIP = "RefCustomTest_TinyCLIPLoader"
FIXTURE_VAE = "RefCustomTest_TinyVAELoader"
FIXTURE_REDUX = "RefCustomTest_TinyReduxLoader"
FIXTURE_CLIP_VISION = "RefCustomTest_TinyCLIPVisionLoader"
# Loader class -> fixture node for each of its outputs, in output order.
LOADER_SUBSTITUTES = {
    "UNETLoader": (FIXTURE_FLUX,),
    "CheckpointLoaderSimple": (FIXTURE_FLUX, FIXTURE_CLIP, FIXTURE_VAE),
    "DualCLIPLoader": (FIXTURE_CLIP,),
    "CLIPLoader": (FIXTURE_CLIP,),
    "VAELoader": (FIXTURE_VAE,),
    "StyleModelLoader": (FIXTURE_REDUX,),  # FLUX.1 Redux
    "CLIPVisionLoader": (FIXTURE_CLIP_VISION,),  # SigLIP (sigclip_vision_patch14_384)
}
_SHORT_NAMES = {FIXTURE_FLUX: "model", FIXTURE_CLIP: "clip", FIXTURE_VAE: "vae", FIXTURE_REDUX: "style_model",
                FIXTURE_CLIP_VISION: "clip_vision"}
# Other loaders of the models the fixtures stand for: a --tiny run cannot load real weights for them.
UNSUBSTITUTED_LOADERS = {"CheckpointLoader", "unCLIPCheckpointLoader", "ImageOnlyCheckpointLoader",
                         "TripleCLIPLoader", "QuadrupleCLIPLoader", "DiffusersLoader"}


class HeadlessError(RuntimeError):
    """Base class of this module's errors."""


class ServerDied(HeadlessError):
    """The ComfyUI process exited (or never came up)."""


class PromptRejected(HeadlessError):
    """POST /prompt answered 400: the graph failed validation. `node_errors` is ComfyUI's own dict."""

    def __init__(self, error, node_errors):
        self.error = error
        self.node_errors = node_errors or {}
        message = error.get("message", error) if isinstance(error, dict) else error
        details = []
        for node_id, info in self.node_errors.items():
            for err in info.get("errors", []):
                details.append(f"node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
        super().__init__(f"prompt rejected: {message}" + ("".join(f"\n  {d}" for d in details)))


class PromptFailed(HeadlessError):
    """The prompt was accepted but a node raised while executing."""

    def __init__(self, prompt_id, error, entry):
        self.prompt_id = prompt_id
        self.error = error or {}
        self.entry = entry
        self.node_id = self.error.get("node_id")
        self.node_type = self.error.get("node_type")
        self.exception_type = self.error.get("exception_type")
        self.exception_message = self.error.get("exception_message")
        self.traceback = "".join(self.error.get("traceback") or [])
        super().__init__(
            f"prompt {prompt_id} failed in node {self.node_id} ({self.node_type}): "
            f"{self.exception_type}: {self.exception_message}"
        )


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prepare_base_dir(base_dir: Path, pack_root: Path | None = REPO_ROOT, pack_name: str = PACK_NAME,
                     inputs: Path | None = WORKFLOW_INPUTS) -> Path:
    """Create the folders of a --base-directory; link the pack into its custom_nodes/; copy workflow inputs.

    ComfyUI v0.8.0's --base-directory moves custom_nodes/ too (folder_paths.py), so the host's own
    custom_nodes/ is not loaded: the pack under test must be linked here.
    """
    base_dir = Path(base_dir)
    for sub in ("models", "input", "output", "user", "custom_nodes"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    if pack_root is not None:
        link = base_dir / "custom_nodes" / pack_name
        if link.is_symlink() or link.exists():
            if link.resolve() != Path(pack_root).resolve():
                raise HeadlessError(f"{link} exists and is not a link to {pack_root}")
        else:
            link.symlink_to(Path(pack_root).resolve(), target_is_directory=True)
    if inputs is not None and Path(inputs).is_dir():
        shutil.copytree(inputs, base_dir / "input", dirs_exist_ok=True)
    return base_dir


FIXTURE_PACK = REPO_ROOT / "tests" / "fixture_pack"
FIXTURE_PACK_NAME = "refcustom_test_fixtures"  # sorts after the pack's folder: ComfyUI loads the pack first


def link_fixture_pack(base_dir: Path) -> None:
    """Link the test-only fixture nodes (tests/fixture_pack) into the server's custom_nodes/."""
    link = Path(base_dir) / "custom_nodes" / FIXTURE_PACK_NAME
    if not (link.is_symlink() or link.exists()):
        link.symlink_to(FIXTURE_PACK.resolve(), target_is_directory=True)


class Server:
    """A running headless ComfyUI (see start_server). Use as a context manager or call stop()."""

    def __init__(self, process: subprocess.Popen, port: int, base_dir: Path, log_path: Path, log_file):
        self.process = process
        self.port = port
        self.base_dir = Path(base_dir)
        self.log_path = Path(log_path)
        self._log_file = log_file
        self.url = f"http://{LOOPBACK}:{port}"
        self.client_id = uuid.uuid4().hex
        self.startup_log = ""  # the log up to the first answer: pack imports, node registration
        self.device = "cpu"  # what start_server asked ComfyUI for: "cpu" or the accelerator's kind

    # ---- process ----

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _died(self, what: str) -> ServerDied:
        return ServerDied(f"{what}: ComfyUI exited with code {self.process.poll()}; "
                          f"last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server's process group (started by us), then kill it if it lingers."""
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=timeout)
        if not self._log_file.closed:
            self._log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- HTTP ----

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if not self.alive():
                raise self._died(f"{method} {path}") from exc
            raise

    def get_json(self, path: str, timeout: float = 60.0):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise HeadlessError(f"GET {path} answered {status}: {body[:500]!r}")
        return json.loads(body)

    def object_info(self) -> dict:
        return self.get_json("/object_info", timeout=120.0)

    def queue(self, api_graph: dict) -> str:
        """POST /prompt; returns the prompt id. Raises PromptRejected with ComfyUI's node_errors on 400."""
        payload = json.dumps({"prompt": api_graph, "client_id": self.client_id}).encode()
        status, body = self.request("POST", "/prompt", payload, {"Content-Type": "application/json"})
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {"error": body.decode(errors="replace")}
        if status == 400:
            raise PromptRejected(answer.get("error"), answer.get("node_errors"))
        if status != 200:
            raise HeadlessError(f"POST /prompt answered {status}: {answer}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.2, on_poll=None) -> dict:
        """Poll /history/<id> until the prompt finished; return its history entry or raise PromptFailed.

        on_poll: called with no argument on every poll (scripts/headless.py's command line passes a
        LogFollower to show the server's progress)."""
        deadline = time.monotonic() + timeout
        while True:
            if on_poll is not None:
                on_poll()
            if not self.alive():
                raise self._died(f"waiting for prompt {prompt_id}")
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry is not None and (status.get("completed") or status.get("status_str") == "error"):
                if status.get("status_str") == "error":
                    error = next((data for event, data in status.get("messages", []) if event == "execution_error"), None)
                    if error is None:
                        error = next(({"exception_type": event, "exception_message": str(data)}
                                      for event, data in status.get("messages", []) if event == "execution_interrupted"),
                                     {"exception_message": f"status {status}"})
                    raise PromptFailed(prompt_id, error, entry)
                return entry
            if time.monotonic() > deadline:
                raise HeadlessError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; "
                                    f"queue: {self.get_json('/queue')}; log tail:\n{self.log_tail(20)}")
            time.sleep(poll)

    def run(self, api_graph: dict, timeout: float = 300.0, on_poll=None) -> dict:
        return self.wait(self.queue(api_graph), timeout=timeout, on_poll=on_poll)

    @staticmethod
    def output_images(entry: dict) -> list[dict]:
        """The {filename, subfolder, type} records of every image output, in node-id order."""
        records = []
        for node_id in sorted(entry.get("outputs", {}), key=lambda k: (len(k), k)):
            records += [dict(image, node_id=node_id) for image in entry["outputs"][node_id].get("images", [])]
        return records

    def images(self, entry: dict) -> list[bytes]:
        """The bytes of every image the prompt output (GET /view)."""
        out = []
        for image in self.output_images(entry):
            query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
            status, body = self.request("GET", f"/view?{query}")
            if status != 200:
                raise HeadlessError(f"GET /view?{query} answered {status}")
            out.append(body)
        return out

    def upload_image(self, path_or_bytes, name: str | None = None, subfolder: str = "", overwrite: bool = True) -> dict:
        """POST /upload/image (multipart) into the server's input folder; returns ComfyUI's answer."""
        if isinstance(path_or_bytes, (bytes, bytearray)):
            data = bytes(path_or_bytes)
            if not name:
                raise ValueError("name is required when uploading bytes")
        else:
            data = Path(path_or_bytes).read_bytes()
            name = name or Path(path_or_bytes).name
        boundary = uuid.uuid4().hex
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, answer = self.request("POST", "/upload/image", body,
                                      {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise HeadlessError(f"POST /upload/image answered {status}: {answer[:300]!r}")
        return json.loads(answer)


def accelerator_of(python) -> str | None:
    """The accelerator the host's torch sees ('cuda', 'xpu', 'mps'), or None: what ComfyUI would pick."""
    probe = ("import torch\n"
             "xpu = getattr(torch, 'xpu', None)\n"
             "mps = getattr(torch.backends, 'mps', None)\n"
             "print('cuda' if torch.cuda.is_available() else 'xpu' if xpu is not None and xpu.is_available() "
             "else 'mps' if mps is not None and mps.is_available() else '')")
    try:
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def server_command(python, port: int, base_dir: Path, accelerator: str | None, extra_args=()) -> list[str]:
    """ComfyUI's command line: loopback only, no browser, no API nodes, an in-memory database; `--cpu`
    unless an accelerator is to be used (then ComfyUI picks the device itself, as a user's plain start does)."""
    return [str(python), "main.py", *([] if accelerator else ["--cpu"]), "--listen", LOOPBACK, "--port", str(port),
            "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
            "--base-directory", str(base_dir), *map(str, extra_args)]


def start_server(comfy_root, base_dir, port: int | None = None, extra_env: dict | None = None,
                 python=None, extra_args=(), timeout: float = 180.0, pack_root: Path | None = REPO_ROOT,
                 inputs: Path | None = WORKFLOW_INPUTS, device: str = "cpu") -> Server:
    """Start ComfyUI (loopback only) with `base_dir` as its base directory and wait until it answers.

    device: "cpu" (the tests and the tiny models: `--cpu`, reproducible anywhere) or "auto" (ComfyUI's own
    device choice when the host's torch sees an accelerator, `--cpu` when it sees none, since ComfyUI with
    a CUDA build of torch and no GPU fails to start). `server.device` says which it got.
    """
    if device not in ("cpu", "auto"):
        raise ValueError(f"device must be 'cpu' or 'auto', not {device!r}")
    comfy_root, base_dir = Path(comfy_root).resolve(), Path(base_dir).resolve()
    if not (comfy_root / "main.py").is_file():
        raise HeadlessError(f"{comfy_root} is not a ComfyUI checkout (no main.py)")
    prepare_base_dir(base_dir, pack_root=pack_root, inputs=inputs)
    if (extra_env or {}).get(FIXTURES_ENV) == "1":
        link_fixture_pack(base_dir)
    if python is None:
        venv_python = comfy_root / ".venv" / "bin" / "python"
        python = venv_python if venv_python.exists() else Path(sys.executable)
    port = port or free_port()
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"})
    env.update(extra_env or {})
    accelerator = accelerator_of(python) if device == "auto" else None
    command = server_command(python, port, base_dir, accelerator, extra_args)
    log_path = base_dir / "server.log"
    log_file = open(log_path, "ab")
    log_file.write(f"$ {' '.join(command)}\n".encode())
    log_file.flush()
    process = subprocess.Popen(command, cwd=comfy_root, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, port, base_dir, log_path, log_file)
    server.device = accelerator or "cpu"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not server.alive():
                raise server._died("starting")
            try:
                status, _ = server.request("GET", "/system_stats", timeout=5.0)
                if status == 200:
                    server.startup_log = server.log_text()
                    return server
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerDied(f"ComfyUI did not answer on port {port} within {timeout:.0f} s; "
                                 f"last lines of {log_path}:\n{server.log_tail()}")
            time.sleep(0.25)
    except BaseException:
        server.stop()
        raise


class LogFollower:
    """Echoes what a server writes to its log while a prompt runs: model loads, the sampler's progress bar.

    A progress bar redraws one line with carriage returns, so of each unfinished line only its latest state
    is shown, at most every `interval` seconds; finished lines are shown as they are."""

    def __init__(self, server: Server, out=None, interval: float = 5.0, prefix: str = "  comfyui| "):
        self.server, self.out, self.interval, self.prefix = server, out or sys.stderr, interval, prefix
        self.offset = len(server.log_text())
        self.partial_shown, self.last_partial = "", 0.0

    def __call__(self) -> None:
        text = self.server.log_text()
        new, complete = text[self.offset:], text[self.offset:].rfind("\n")
        for line in new[:complete + 1].split("\n")[:-1]:  # not splitlines(): it splits at the bar's \r too
            state = line.rsplit("\r", 1)[-1].strip()
            if state and state != self.partial_shown:
                print(self.prefix + state, file=self.out, flush=True)
            self.partial_shown = ""
        self.offset += complete + 1
        partial = new[complete + 1:].rsplit("\r", 1)[-1].strip()
        now = time.monotonic()
        if partial and partial != self.partial_shown and now - self.last_partial >= self.interval:
            print(self.prefix + partial, file=self.out, flush=True)
            self.partial_shown, self.last_partial = partial, now


# ---- graphs ----

def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


FRONTEND_ONLY_NODES = ("Note", "MarkdownNote")  # UI nodes that never reach the API graph


def shipped_ui_twin(api_path: Path, api_graph: dict) -> dict | None:
    """The UI workflow shipped with an API one (workflows/api/<name>.json -> workflows/<name>.json), when its
    nodes are the API graph's (same ids and types, notes aside); else None."""
    candidate = Path(api_path).parent.parent / Path(api_path).name
    if Path(api_path).parent.name != "api" or not candidate.is_file():
        return None
    ui = json.loads(candidate.read_text())
    if not is_ui_workflow(ui):
        return None
    ui_nodes = {str(n.get("id")): n.get("type") for n in ui["nodes"] if n.get("type") not in FRONTEND_ONLY_NODES}
    return ui if ui_nodes == {k: v.get("class_type") for k, v in api_graph.items()} else None


# ---- PNG metadata: the workflow an image carries ----

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_with_workflow(png: bytes, prompt: dict, workflow: dict | None) -> bytes:
    """`png` re-saved with ComfyUI SaveImage's text chunks: `prompt` (API graph) and `workflow` (UI graph; None:
    no such chunk), json.dumps'ed, in place of any it carried; the pixels are kept. Dropped on the canvas, the
    image gives back `workflow` (or, without it, `prompt`)."""
    from PIL import Image  # ComfyUI's own dependency; imported here so the rest of this file needs only the stdlib
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))  # SaveImage's order
    if workflow is not None:
        info.add_text("workflow", json.dumps(workflow))
    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.save(out, format="PNG", pnginfo=info, compress_level=9)
    return out.getvalue()


def _links(graph: dict):
    """(node_id, input_name, source_id, output_index) for every link of an API graph."""
    for node_id, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
                yield node_id, name, value[0], value[1]


def substitute_fixture_loaders(api_graph: dict, seed: int = 0) -> dict:
    """A copy of `api_graph` whose model loaders are the tiny fixture loaders (node ids kept).

    CheckpointLoaderSimple's CLIP and VAE outputs get new nodes `<id>_tiny_clip` / `<id>_tiny_vae`, and the
    links that read them are rewired. Loaders of these models that cannot be substituted raise ValueError.
    """
    graph = copy.deepcopy(api_graph)
    rewire = {}
    for node_id, node in list(graph.items()):
        class_type = node.get("class_type")
        if class_type in UNSUBSTITUTED_LOADERS:
            raise ValueError(f"node {node_id}: {class_type} has no tiny fixture substitute; "
                             f"use UNETLoader + DualCLIPLoader + VAELoader or CheckpointLoaderSimple")
        substitutes = LOADER_SUBSTITUTES.get(class_type)
        if not substitutes:
            continue
        title = node.get("_meta", {}).get("title", class_type)
        for index, fixture in enumerate(substitutes):
            new_id = node_id if index == 0 else f"{node_id}_tiny_{_SHORT_NAMES[fixture]}"
            inputs = {"seed": seed}
            weight_dtype = node.get("inputs", {}).get("weight_dtype", "default")
            if class_type == "UNETLoader" and weight_dtype != "default":  # fp8: the tiny model is stored in fp8 too
                inputs["weight_dtype"] = weight_dtype
            graph[new_id] = {"class_type": fixture, "inputs": inputs, "_meta": {"title": f"{title} (tiny fixture)"}}
            rewire[(node_id, index)] = (new_id, 0)
    for node_id, name, source, output in list(_links(graph)):
        if (source, output) in rewire:
            graph[node_id]["inputs"][name] = list(rewire[(source, output)])
    return graph


def load_image_names(api_graph: dict) -> list[str]:
    return [node["inputs"]["image"] for node in api_graph.values()
            if node.get("class_type") == "LoadImage" and isinstance(node.get("inputs", {}).get("image"), str)]


def latent_size(api_graph: dict) -> tuple[int, int] | None:
    """(width, height) of the graph's one empty latent, if it has exactly one; else None."""
    sizes = {(node["inputs"]["width"], node["inputs"]["height"]) for node in api_graph.values()
             if "Latent" in node.get("class_type", "") and node.get("class_type", "").startswith("Empty")
             and isinstance(node.get("inputs", {}).get("width"), int) and isinstance(node["inputs"].get("height"), int)}
    return sizes.pop() if len(sizes) == 1 else None


def shrink_graph(api_graph: dict, max_side: int = 128, caps: dict | None = None) -> dict:
    """A copy of `api_graph` made cheap for smoke tests: empty latents at most `max_side` px a side
    (aspect kept, multiples of 16) and every int input named in `caps` at most its cap
    (default: steps 2, ref_res 128)."""
    caps = {"steps": 2, "ref_res": 128} if caps is None else caps
    graph = copy.deepcopy(api_graph)
    for node in graph.values():
        inputs = node.get("inputs", {})
        class_type = node.get("class_type", "")
        if class_type.startswith("Empty") and "Latent" in class_type:
            width, height = inputs.get("width"), inputs.get("height")
            if isinstance(width, int) and isinstance(height, int) and max(width, height) > max_side:
                scale = max_side / max(width, height)
                inputs["width"] = max(16, int(width * scale) // 16 * 16)
                inputs["height"] = max(16, int(height * scale) // 16 * 16)
        for name, cap in caps.items():
            if isinstance(inputs.get(name), int) and not isinstance(inputs.get(name), bool) and inputs[name] > cap:
                inputs[name] = cap
    return graph


# ---- tiny files ----

_WRITE_TINY_FILES = r"""
import importlib, json, runpy, sys, types
root, models = sys.argv[1], sys.argv[2]
load_module = runpy.run_path(root + "/scripts/load_by_path.py")["load_module"]
try:
    load_module("refcustom", root + "/__init__.py", package_dir=root)
except FileNotFoundError:
    module = types.ModuleType("refcustom"); module.__path__ = [root]; sys.modules["refcustom"] = module
try:
    dreamo_files = importlib.import_module("refcustom.tests.fixtures.dreamo_files")
except ModuleNotFoundError as exc:
    if exc.name and exc.name.endswith("dreamo_files"):
        sys.exit(3)
    raise
written = dreamo_files.write_official_tiny_files(__import__("pathlib").Path(models))
written.update(importlib.import_module("refcustom.tests.fixtures.aligngen_files").write_tiny_aligngen_files(
    __import__("pathlib").Path(models)))
print(json.dumps({k: str(v) for k, v in written.items()}))
"""


def write_tiny_files(models_dir: Path, python=None, repo_root: Path = REPO_ROOT) -> dict[str, str] | None:
    """Write the tiny official DreamO files into models_dir with the host's Python (it has torch).

    Returns name -> path, or None (with a warning) if tests/fixtures/dreamo_files.py does not exist yet.
    """
    python = str(python or sys.executable)
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    result = subprocess.run([python, "-c", _WRITE_TINY_FILES, str(repo_root), str(models_dir)],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if result.returncode == 3:
        print("warning: tests/fixtures/dreamo_files.py not found; no tiny DreamO files written", file=sys.stderr)
        return None
    if result.returncode != 0:
        raise HeadlessError(f"writing the tiny DreamO files failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def tiny_server(comfy_root=None, prefix: str = "refcustom-tiny-"):
    """A headless ComfyUI (CPU) with the tiny fixture models registered and the tiny DreamO files in a fresh
    models/ folder, in a temporary base directory removed afterwards: what the example builder and the API
    client's --tiny use. Graphs for it go through `substitute_fixture_loaders` (and `shrink_graph`)."""
    host = comfy_host()
    root = Path(comfy_root) if comfy_root else host.find_comfyui()
    if root is None:
        raise HeadlessError("no ComfyUI host found: pass --comfyui PATH, set COMFYUI_PATH or run scripts/setup_host.sh")
    python = host.host_python(root)
    base_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        prepare_base_dir(base_dir)
        write_tiny_files(base_dir / "models", python=python)
        with start_server(root, base_dir, python=python, extra_env={FIXTURES_ENV: "1"}) as server:
            yield server
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


# ---- command line ----

TINY_TIMEOUT = 600.0
# Real weights: loading FLUX.1-dev bf16 + T5 from disk (several minutes on a slow disk or with offloading)
# plus 25 steps at 1024 px (about 1 min on a recent 24 GB GPU, several with --lowvram offloading).
REAL_TIMEOUT = 3600.0

def comfy_host():
    """tests/comfy_host.py (where the ComfyUI host is: find_comfyui, host_python), loaded by path."""
    return load_module("refcustom_comfy_host", REPO_ROOT / "tests" / "comfy_host.py", register=False)


def run_workflow_cli(args) -> int:
    host = comfy_host()
    comfy_root = Path(args.comfyui).expanduser().resolve() if args.comfyui else host.find_comfyui()
    if comfy_root is None:
        print("no ComfyUI host found: pass --comfyui PATH or set COMFYUI_PATH", file=sys.stderr)
        return 2
    python = Path(args.python) if args.python else host.host_python(comfy_root)
    workflow_path = Path(args.workflow)
    graph = json.loads(workflow_path.read_text())
    if is_ui_workflow(graph):
        print(f"{workflow_path} is a UI-format workflow; export it with 'Export (API)' first", file=sys.stderr)
        return 2
    # What the images carry: the workflow as given (real loaders, full size) and its shipped UI twin, not the
    # tiny or shrunk graph that runs, so a picture dropped on a normal ComfyUI gives back the real workflow.
    carried = (graph, shipped_ui_twin(workflow_path, graph))
    extra_env = {}
    if args.tiny:
        graph = substitute_fixture_loaders(graph)
        extra_env[FIXTURES_ENV] = "1"
    if args.shrink:
        graph = shrink_graph(graph)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_dir = Path(tempfile.mkdtemp(prefix="refcustom-headless-"))
    server = None
    try:
        if not args.tiny:  # real weights: the host's own models folder (or --models)
            models = Path(args.models).expanduser().resolve() if args.models else comfy_root / "models"
            (base_dir / "models").symlink_to(models, target_is_directory=True)
        prepare_base_dir(base_dir)
        for name in load_image_names(graph):
            if not (base_dir / "input" / name).exists():
                for candidate in (workflow_path.parent / name, Path(name)):
                    if candidate.is_file():
                        shutil.copy2(candidate, base_dir / "input" / Path(name).name)
                        break
                else:
                    print(f"warning: LoadImage input {name!r} is neither in workflows/inputs nor next to the workflow",
                          file=sys.stderr)
        if args.tiny:
            write_tiny_files(base_dir / "models", python=python)
        device = args.device or ("cpu" if args.tiny else "auto")
        print(f"starting ComfyUI {comfy_root} ({'CPU' if device == 'cpu' else 'its own device choice'}) ...",
              file=sys.stderr, flush=True)
        server = start_server(comfy_root, base_dir, extra_env=extra_env, python=python, device=device,
                              timeout=args.start_timeout)
        timeout = args.timeout or (TINY_TIMEOUT if args.tiny else REAL_TIMEOUT)
        print(f"ComfyUI on {server.url} ({server.device}), base directory {base_dir}; running {workflow_path} "
              f"(timeout {timeout:.0f} s)", file=sys.stderr, flush=True)
        if server.device == "cpu" and not args.tiny:
            print("warning: no GPU: FLUX.1-dev on the CPU takes hours per image (use --timeout to wait)",
                  file=sys.stderr)
        try:
            entry = server.run(graph, timeout=timeout, on_poll=None if args.quiet else LogFollower(server))
        except (PromptRejected, PromptFailed) as exc:
            print(f"error: {exc}", file=sys.stderr)
            if isinstance(exc, PromptFailed) and exc.traceback:
                print(exc.traceback, file=sys.stderr)
            return 1
        records = Server.output_images(entry)
        for record, data in zip(records, server.images(entry), strict=True):
            target = out_dir / record["filename"]
            target.write_bytes(png_with_workflow(data, *carried) if data.startswith(PNG_SIGNATURE) else data)
            print(target)
        if not records:
            print("warning: the workflow produced no images", file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {base_dir}", file=sys.stderr)
        else:
            shutil.rmtree(base_dir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one API-format workflow on a fresh headless server")
    run.add_argument("workflow", help="API-format workflow JSON (ComfyUI: Export (API))")
    run.add_argument("--comfyui", help="ComfyUI checkout (default: COMFYUI_PATH, a parent folder, ~/ComfyUI)")
    run.add_argument("--python", help="Python for the server (default: <comfyui>/.venv/bin/python)")
    run.add_argument("--out", required=True, help="folder for the output images")
    run.add_argument("--tiny", action="store_true", help="tiny random models instead of real weights (tests)")
    run.add_argument("--models", help="models folder for a real run (default: <comfyui>/models)")
    run.add_argument("--shrink", action="store_true",
                     help="smoke-test size: latents at most 128 px a side, 2 steps, ref_res at most 128")
    run.add_argument("--device", choices=("auto", "cpu"),
                     help="auto: ComfyUI's own device choice (the GPU when there is one); cpu: --cpu. "
                          "Default: auto for real weights, cpu with --tiny")
    run.add_argument("--timeout", type=float,
                     help=f"seconds to wait for the prompt (default {REAL_TIMEOUT:.0f} for real weights: the first run "
                          f"reads ~33 GB of FLUX.1-dev files; {TINY_TIMEOUT:.0f} with --tiny)")
    run.add_argument("--start-timeout", type=float, default=300.0,
                     help="seconds to wait for ComfyUI to start answering (default 300)")
    run.add_argument("--quiet", action="store_true", help="do not echo the server's log (progress) while it runs")
    run.add_argument("--keep", action="store_true", help="keep the temporary base directory (server.log)")
    args = parser.parse_args(argv)
    return run_workflow_cli(args)


if __name__ == "__main__":
    sys.exit(main())
