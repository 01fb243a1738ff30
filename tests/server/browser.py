"""Drive ComfyUI's own frontend (comfyui-frontend-package) in headless Chromium through Playwright.

`find_chromium()` says which browser the tests use or why there is none; `Canvas` wraps one page on a
running test server and does what a user does: drop a file on the canvas, press Run, look at the canvas.

The server behind it has no real weights, so the page's POST /api/prompt is rewritten on its way out by
`rewrite_prompt` (the same loader substitution and shrinking the headless tests use): everything the
frontend does (load, validate, convert the graph, queue, receive progress and images over its WebSocket,
draw the image on the node) is real.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

CHROMIUM_ENV = "REFCUSTOM_CHROMIUM"
# What a sandboxed CI machine needs: no GPU, no sandbox (root), and no background traffic to Google.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
OUTPUT_NODE_TYPES = ("SaveImage", "PreviewImage")

_DROP_FILE = """async ([name, mime, b64]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type: mime}));
  const target = document.querySelector('#graph-canvas') || document;
  for (const type of ['dragenter', 'dragover', 'drop'])
    target.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
}"""

# Collects the frontend's own api events (the WebSocket messages it received) for the test to read.
_LISTEN = """() => {
  if (window.__refcustom) return;
  window.__refcustom = {executed: [], errors: [], progress: []};
  app.api.addEventListener('executed', e => window.__refcustom.executed.push(e.detail));
  app.api.addEventListener('execution_error', e => window.__refcustom.errors.push(e.detail));
  app.api.addEventListener('progress', e => window.__refcustom.progress.push(e.detail));
}"""

_GRAPH = """() => app.graph.nodes.map(n => ({
  id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
  has_errors: !!n.has_errors, widgets_values: n.widgets ? n.widgets.map(w => w.value) : [],
}))"""

# What the user sees of the graph: the canvas panel (right of the sidebar, below the tabs and the Run bar),
# what floats over it (the minimap, the zoom controls: the panel's small children), the view's scale, and every
# node's (title included) and group's box, in screen pixels (screen = canvas rect + (canvas + offset) * scale).
_VIEW = """() => {
  const panel = document.querySelector('.graph-canvas-panel');
  const p = panel.getBoundingClientRect();
  const overlays = Array.from(panel.children).map(e => e.getBoundingClientRect())
    .filter(r => r.width * r.height > 0 && r.width * r.height < p.width * p.height / 2)
    .map(r => [r.left, r.top, r.right, r.bottom]);
  const c = app.canvas.canvas.getBoundingClientRect();
  const {scale, offset} = app.canvas.ds;
  const screen = ([x, y, w, h]) => [c.left + (x + offset[0]) * scale, c.top + (y + offset[1]) * scale,
                                    c.left + (x + w + offset[0]) * scale, c.top + (y + h + offset[1]) * scale];
  return {scale, offset: [offset[0], offset[1]], visible: [p.left, p.top, p.right, p.bottom], overlays,
          nodes: app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title, box: screen(n.getBounding())})),
          groups: app.graph.groups.map(g => ({title: g.title, box: screen(g.boundingRect)}))};
}"""

_VISIBLE_DIALOGS = """() => Array.from(document.querySelectorAll('.p-dialog'))
  .filter(d => d.offsetParent !== null || d.getClientRects().length)
  .map(d => d.innerText.slice(0, 400))"""

# True once every output node shows the image named in its newest 'executed' event (drawn on the canvas).
_IMAGES_SHOWN = """([ids, since]) => {
  const events = window.__refcustom.executed.slice(since);
  if (window.__refcustom.errors.length) return 'error';
  return ids.every(id => {
    const done = events.filter(e => String(e.node) === String(id) && e.output && e.output.images);
    if (!done.length) return false;
    const name = done[done.length - 1].output.images[0].filename;
    const node = app.graph.getNodeById(id);
    return !!(node && node.imgs && node.imgs.length && node.imgs.every(i => i.complete && i.naturalWidth > 0)
              && node.imgs.some(i => decodeURIComponent(i.src).includes(name)));
  }) ? 'shown' : false;
}"""


def find_chromium() -> tuple[str | None, str]:
    """(executable, '') or (None, why the browser test cannot run)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "the Python package playwright is not installed (scripts/setup_host.sh installs it)"
    candidates = [os.environ.get(CHROMIUM_ENV, "")] + [shutil.which(n) or "" for n in ("chromium", "chromium-browser")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate, ""
    return None, (f"no Chromium found (set {CHROMIUM_ENV}, or install Debian's chromium; .ci/run does when it "
                  f"runs as root)")


class FrontendError(AssertionError):
    """The page showed something a user would see as broken (dialog, missing node, execution error)."""


class Canvas:
    """One ComfyUI page in headless Chromium. Use `with Canvas.open(...) as canvas:`."""

    def __init__(self, playwright, browser, page, server_url: str, screenshots: Path):
        self._playwright, self._browser, self.page = playwright, browser, page
        self.url = server_url
        self.screenshots = Path(screenshots)
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.console_errors: list[str] = []
        self.opened: dict[str, dict] = {}  # what a test module recorded as each workflow opened (its view)
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)

    @classmethod
    def open(cls, server_url: str, chromium: str, user_data_dir: Path, screenshots: Path, rewrite_prompt=None):
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        try:
            context = playwright.chromium.launch_persistent_context(
                str(user_data_dir), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
            page = context.pages[0] if context.pages else context.new_page()
            if rewrite_prompt is not None:
                def on_prompt(route):
                    if route.request.method != "POST":
                        return route.continue_()
                    body = json.loads(route.request.post_data)
                    body["prompt"] = rewrite_prompt(body["prompt"])
                    return route.continue_(post_data=json.dumps(body))
                page.route("**/api/prompt", on_prompt)
            canvas = cls(playwright, context, page, server_url, screenshots)
            canvas.load_page()
            return canvas
        except BaseException:
            playwright.stop()
            raise

    def close(self):
        try:
            self._browser.close()
        finally:
            self._playwright.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- page ----

    def load_page(self, timeout: float = 90.0):
        # A returning user: the frontend greets a new one with the template browser (tested on its own).
        self.page.request.post(self.url + "/api/settings/Comfy.TutorialCompleted", data="true",
                               headers={"Content-Type": "application/json"})
        self.page.goto(self.url + "/", timeout=timeout * 1000)
        self.page.wait_for_function("() => window.app && app.graph && window.LiteGraph && app.api",
                                    timeout=timeout * 1000)
        self.page.evaluate(_LISTEN)
        self.close_dialogs()

    def close_dialogs(self):
        """Close whatever the frontend opened on its own (the template browser greets a new user)."""
        for _ in range(3):
            if not self.visible_dialogs():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def visible_dialogs(self) -> list[str]:
        return self.page.evaluate(_VISIBLE_DIALOGS)

    def command(self, command_id: str):
        """Run a frontend command by id, as its menu entry or keybinding does."""
        self.page.evaluate("(id) => app.extensionManager.command.execute(id)", command_id)

    def screenshot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    # ---- graph ----

    def drop_file(self, path: Path, mime: str, expected_nodes: int, timeout: float = 30.0, fit_view: bool = True):
        """Drag-and-drop `path` onto the canvas; wait until the graph has `expected_nodes` nodes. fit_view=False
        keeps the view the file saved (its extra.ds), as a user gets it."""
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.page.evaluate("() => { app.graph.clear(); }")
        self.page.evaluate(_DROP_FILE, [Path(path).name, mime, data])
        self.page.wait_for_function("(n) => app.graph.nodes.length === n", arg=expected_nodes, timeout=timeout * 1000)
        self.page.wait_for_timeout(500)  # let dialogs that follow a load (missing nodes/models) open
        if fit_view:
            self.command("Comfy.Canvas.FitView")

    def view(self) -> dict:
        """The view as the user sees it: scale, offset, the visible canvas and the overlays on it
        ([left, top, right, bottom] screen pixels), each node's box (`nodes`: id, type, title, box) and group's
        (`groups`: title, box)."""
        return self.page.evaluate(_VIEW)

    def graph(self) -> list[dict]:
        return sorted(self.page.evaluate(_GRAPH), key=lambda n: n["id"])

    def run_and_wait_for_images(self, timeout: float = 240.0) -> float:
        """Press Run; wait until every output node shows the image of this run. Returns seconds taken."""
        output_ids = [n["id"] for n in self.graph() if n["type"] in OUTPUT_NODE_TYPES]
        if not output_ids:
            raise FrontendError("the workflow has no SaveImage/PreviewImage node")
        since = self.page.evaluate("() => window.__refcustom.executed.length")
        self.page.evaluate("() => { window.__refcustom.errors = []; }")
        start = time.monotonic()
        self.page.get_by_role("button", name="Run", exact=True).click()
        state = self.page.wait_for_function(_IMAGES_SHOWN, arg=[output_ids, since], timeout=timeout * 1000)
        if state.json_value() == "error":
            errors = self.page.evaluate("() => window.__refcustom.errors")
            raise FrontendError(f"the run failed: {json.dumps(errors)[:2000]}")
        seconds = time.monotonic() - start
        self.command("Comfy.Canvas.FitView")
        self.page.wait_for_timeout(300)
        return seconds
