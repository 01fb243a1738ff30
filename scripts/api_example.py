#!/usr/bin/env python3
"""Run a shipped API workflow on a running ComfyUI: set the prompt, the reference images and the seed,
follow the progress over the WebSocket, save the images.

ComfyUI's plain HTTP API (urllib) plus `websocket-client` (`pip install websocket-client`), the library
ComfyUI's own script_examples/websockets_api_example.py uses. Start ComfyUI with this pack and the
weights first (`python main.py` in ComfyUI), then:

    python scripts/api_example.py --server http://127.0.0.1:8188 --workflow workflows/api/dreamo_ip.json \\
        --prompt "a toy from [ref#1] on a beach" --reference my_toy.png --seed 7 --out outputs/

That needs the workflow's weights in ComfyUI's models folder (scripts/fetch_weights.py --workflow dreamo_ip).
To try the client with no weights at all, add `--tiny`: instead of --server it starts its own headless
ComfyUI (scripts/headless.py, CPU) with the tests' tiny random-weight models, swaps the workflow's loaders
for them and shrinks the graph to smoke-test size (the picture is noise), then stops the server:

    ~/ComfyUI/.venv/bin/python scripts/api_example.py --tiny --workflow workflows/api/dreamo_ip.json \\
        --prompt "a toy from [ref#1] on a beach" --reference workflows/inputs/refcustom_subject.png --out outputs/

From Python (tests/server/test_api_workflows.py loads this file by path and does this for every workflow):

    graph = json.loads(Path("workflows/api/dreamo_ip.json").read_text())
    set_prompt(graph, "a toy from [ref#1] on a beach")
    set_reference(graph, upload_image(server, "my_toy.png"), 1)
    set_seed(graph, 7)
    prompt_id, events = run(server, graph, on_progress=print)
    for filename, png in fetch_images(server, prompt_id): ...

Where things go in a graph:
- the prompt: walk up from each sampler (a node with a `latent_image` input) through its `guider`,
  `positive` and `conditioning` links; the first node with a `text` widget is the positive prompt
  (DreamO Text Encode, AlignGen Conditioning, or the CLIPTextEncode feeding the positive side);
- reference n: the n-th LoadImage in node-id order (n = 1, 2, ...; the shipped workflows number
  them like their [ref#n] placeholders);
- the seed: every KSampler `seed` and RandomNoise (KSamplerAdvanced, SamplerCustom) `noise_seed`.

Errors: a graph that fails validation raises PromptRejected with ComfyUI's `node_errors` (HTTP 400);
a node that raises while running (e.g. a 10x10 reference, a prompt without AlignGen's concept name)
raises NodeError with ComfyUI's `node_id`, `node_type` and `exception_message`. The server goes on
serving either way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import runpy
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

SEED_INPUTS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed", "SamplerCustom": "noise_seed",
               "RandomNoise": "noise_seed"}
POSITIVE_LINKS = ("guider", "positive", "conditioning")  # followed upstream from a sampler, in this order


class ComfyError(RuntimeError):
    """Base class of this example's errors."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400: the graph failed validation. `node_errors` is ComfyUI's dict by node id."""

    def __init__(self, error, node_errors):
        self.error, self.node_errors = error, node_errors or {}
        lines = [f"prompt rejected: {error.get('message', error) if isinstance(error, dict) else error}"]
        for node_id, info in self.node_errors.items():
            lines += [f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}"
                      for e in info.get("errors", [])]
        super().__init__("\n".join(lines))


class NodeError(ComfyError):
    """A node raised while the prompt ran: ComfyUI's execution_error message (`data`)."""

    def __init__(self, data: dict):
        self.data = data
        self.node_id, self.node_type = data.get("node_id"), data.get("node_type")
        self.exception_type = data.get("exception_type", "")
        self.exception_message = data.get("exception_message", "")
        super().__init__(f"node {self.node_id} ({self.node_type}) failed: {self.exception_type}: "
                         f"{self.exception_message}")


# ---- the graph ----

def _node_ids(graph: dict, class_type: str) -> list[str]:
    return sorted((k for k, v in graph.items() if v.get("class_type") == class_type), key=lambda k: (len(k), k))


def find_prompt_nodes(graph: dict) -> list[str]:
    """The positive prompt node of every sampler (see the module docstring), each once."""
    found = []
    for node_id, node in graph.items():
        if "latent_image" not in node.get("inputs", {}):
            continue
        while "text" not in graph[node_id].get("inputs", {}):
            inputs = graph[node_id].get("inputs", {})
            link = next((inputs[name] for name in POSITIVE_LINKS if isinstance(inputs.get(name), list)), None)
            if link is None or link[0] not in graph:
                break
            node_id = link[0]
        if isinstance(graph[node_id].get("inputs", {}).get("text"), str) and node_id not in found:
            found.append(node_id)
    return found


def set_prompt(graph: dict, text: str) -> list[str]:
    """Write `text` into the positive prompt node(s); returns their ids."""
    nodes = find_prompt_nodes(graph)
    if not nodes:
        raise ValueError("no positive prompt found: no sampler's guider/positive/conditioning chain reaches a node "
                         "with a `text` widget; set graph[node_id]['inputs']['text'] yourself")
    for node_id in nodes:
        graph[node_id]["inputs"]["text"] = text
    return nodes


def set_reference(graph: dict, image_name: str, n: int = 1) -> str:
    """Point the n-th LoadImage (node-id order, from 1) at `image_name` (an upload_image result); returns its id."""
    loaders = _node_ids(graph, "LoadImage")
    if not 1 <= n <= len(loaders):
        raise ValueError(f"reference {n}: this workflow has {len(loaders)} LoadImage node(s) "
                         f"{[graph[k].get('_meta', {}).get('title', k) for k in loaders]}")
    graph[loaders[n - 1]]["inputs"]["image"] = image_name
    return loaders[n - 1]


def set_seed(graph: dict, seed: int) -> list[str]:
    """Set every sampler's seed (SEED_INPUTS); returns the node ids."""
    nodes = [k for k, v in graph.items() if SEED_INPUTS.get(v.get("class_type")) in v.get("inputs", {})]
    if not nodes:
        raise ValueError(f"no seed in this workflow (none of {sorted(SEED_INPUTS)})")
    for node_id in nodes:
        graph[node_id]["inputs"][SEED_INPUTS[graph[node_id]["class_type"]]] = seed
    return nodes


# ---- the server ----

def _request(server: str, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
    request = urllib.request.Request(server.rstrip("/") + path, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def upload_image(server: str, path, name: str | None = None) -> str:
    """POST /upload/image (multipart) into ComfyUI's input folder; returns the name a LoadImage takes."""
    data, name = Path(path).read_bytes(), name or Path(path).name
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    answer = json.loads(_request(server, "/upload/image", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]


def queue(server: str, graph: dict, client_id: str, prompt_id: str) -> None:
    """POST /prompt; PromptRejected (with ComfyUI's node_errors) if the graph does not validate."""
    payload = json.dumps({"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}).encode()
    try:
        _request(server, "/prompt", payload, {"Content-Type": "application/json"})
    except urllib.error.HTTPError as error:
        if error.code != 400:
            raise
        answer = json.loads(error.read() or b"{}")
        raise PromptRejected(answer.get("error"), answer.get("node_errors")) from None


def run(server: str, graph: dict, on_progress=None, timeout: float = 600.0) -> tuple[str, list[dict]]:
    """Queue `graph` and follow it on the WebSocket until it finishes; returns (prompt_id, events).

    events: this prompt's messages in order, each {"type", "data"}: execution_start, execution_cached,
    executing {node}, progress {node, value, max}, executed {node, output}, execution_success (or
    execution_error), and last executing {node: None}: the prompt is done and in /history.
    `on_progress(event)` is called for each. NodeError on execution_error (or an interrupt).
    """
    try:
        import websocket  # websocket-client
    except ImportError:
        raise ComfyError("this example needs websocket-client: pip install websocket-client") from None
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    ws_url = server.rstrip("/").replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    deadline = time.monotonic() + timeout
    ws = websocket.create_connection(ws_url, timeout=timeout)  # connect first: no message is missed
    try:
        queue(server, graph, client_id, prompt_id)
        events = []
        while True:
            ws.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s") from None
            if not isinstance(message, str):
                continue  # binary frames are latent previews
            event = json.loads(message)
            if not isinstance(event.get("data"), dict) or event["data"].get("prompt_id") != prompt_id:
                continue  # queue status, other clients' prompts
            events.append(event)
            if on_progress is not None:
                on_progress(event)
            if event["type"] == "executing" and event["data"].get("node") is None:  # done, and in /history
                failure = next((e for e in events if e["type"] in ("execution_error", "execution_interrupted")), None)
                if failure is not None:
                    raise NodeError(failure["data"])
                return prompt_id, events
    finally:
        ws.close()


def get_history(server: str, prompt_id: str) -> dict:
    """GET /history/<id>: the prompt as queued (entry["prompt"][2]), its outputs and status."""
    return json.loads(_request(server, f"/history/{urllib.parse.quote(prompt_id)}"))[prompt_id]


def fetch_images(server: str, prompt_id: str) -> list[tuple[str, bytes]]:
    """(filename, bytes) of every image the prompt output, in node-id order (GET /history, /view)."""
    outputs = get_history(server, prompt_id)["outputs"]
    images = []
    for node_id in sorted(outputs, key=lambda k: (len(k), k)):
        for image in outputs[node_id].get("images", []):
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            images.append((image["filename"], _request(server, f"/view?{query}")))
    return images


# ---- command line ----

@contextlib.contextmanager
def tiny_server(graph: dict):
    """A headless ComfyUI with the tiny fixture models (what the tests use), for trying this client with no
    weights: yields (its address, `graph` with its loaders swapped for the tiny ones and shrunk)."""
    here = Path(__file__).resolve().parent
    load_module = runpy.run_path(str(here / "load_by_path.py"))["load_module"]
    headless = load_module("refcustom_headless", here / "headless.py")
    print("starting a headless ComfyUI with the tiny test models ...", file=sys.stderr, flush=True)
    with headless.tiny_server(prefix="refcustom-api-tiny-") as server:
        yield server.url, headless.shrink_graph(headless.substitute_fixture_loaders(graph))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    parser.add_argument("--workflow", required=True, help="an API-format workflow, e.g. workflows/api/dreamo_ip.json")
    parser.add_argument("--prompt", help="the positive prompt (keep the workflow's [ref#k] placeholders)")
    parser.add_argument("--reference", action="append", default=[],
                        help="reference image file; repeat for reference 2, 3, ... (LoadImage nodes in id order)")
    parser.add_argument("--seed", type=int, help="seed of every sampler")
    parser.add_argument("--out", default="outputs", help="folder for the images")
    parser.add_argument("--tiny", action="store_true",
                        help="no weights needed: start a headless ComfyUI with tiny random models instead of --server")
    args = parser.parse_args(argv)

    graph = json.loads(Path(args.workflow).read_text())
    if args.tiny:
        try:
            with tiny_server(graph) as (address, tiny_graph):
                return run_client(args, address, tiny_graph)
        except (RuntimeError, OSError) as error:  # no host, or the tiny server did not start (HeadlessError)
            print(f"error: {error}", file=sys.stderr)
            return 1
    return run_client(args, args.server, graph)


def run_client(args, server: str, graph: dict) -> int:
    """Upload the references, set prompt and seed, run `graph` on `server`, save the images to args.out."""

    def show(event):  # [KSampler 11] 3/20
        data = event["data"]
        where = f"[{graph.get(data.get('node'), {}).get('class_type')} {data.get('node')}]"
        if event["type"] == "executing" and data.get("node") is not None:
            print(where, flush=True)
        elif event["type"] == "progress":
            print(f"{where} {data['value']}/{data['max']}", flush=True)

    try:
        if args.prompt is not None:
            set_prompt(graph, args.prompt)
        for n, path in enumerate(args.reference, start=1):
            set_reference(graph, upload_image(server, path), n)
        if args.seed is not None:
            set_seed(graph, args.seed)
        prompt_id, _ = run(server, graph, on_progress=show)
        images = fetch_images(server, prompt_id)
    except (ComfyError, ValueError, OSError) as error:  # OSError: a missing file, ComfyUI not reachable
        print(f"error: {error}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for filename, data in images:
        (out / filename).write_bytes(data)
        print(out / filename)
    return 0


if __name__ == "__main__":
    sys.exit(main())
