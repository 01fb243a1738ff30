"""Tier 2 in the browser: ComfyUI's own frontend in headless Chromium (Playwright), as a user meets the pack.

For every shipped workflow: drop workflows/<name>.json on a freshly opened page as a new user would and keep
the view it saved: every node (title included) lies inside the visible canvas and off the minimap and zoom
controls, at a readable scale (at least layout.MIN_SCALE, scripts/workflow_build/layout.py), each node inside a
titled group and none overlapping another once the frontend has sized them (<name>_opened.png; a core FLUX
template is opened the same way for comparison, core_<template>_opened.png). Then drop it again, check that
every node exists, none is red and no dialog (missing nodes, missing models, errors) opened, press Run (the
prompt is switched to the tiny fixture models on its way to the server, see tests/server/browser.py) and wait
until the output node shows this run's image; then drop workflows/example_outputs/<name>.png and check the
same graph comes back and runs. Also: the template browser lists every workflow with its thumbnail and loads
one on click, and the node library shows the pack under one category with descriptions and input tooltips.

Screenshots go to $REFCUSTOM_TEST_OUTPUT/browser (default: out/test-output/browser in this checkout).
Skipped, with the reason printed, when Playwright or Chromium is missing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from refcustom.scripts.workflow_build.layout import MIN_SCALE
from refcustom.tests.comfy_host import REPO_ROOT

from .browser import Canvas, find_chromium
from .shipped_workflows import NAMES, WORKFLOWS

pytestmark = pytest.mark.tier2

SCREENSHOTS = Path(os.environ.get("REFCUSTOM_TEST_OUTPUT", REPO_ROOT / "out" / "test-output")) / "browser"
FIXTURE_PREFIX = "RefCustomTest_"
NOTE_TYPES = ("Note", "MarkdownNote")
# The core template the shipped layouts are compared with (comfyui_workflow_templates_media_image).
CORE_TEMPLATE = "flux_dev_full_text_to_image"


def core_template() -> Path | None:
    try:
        import comfyui_workflow_templates_media_image as templates
    except ImportError:
        return None
    path = Path(templates.__file__).parent / "templates" / f"{CORE_TEMPLATE}.json"
    return path if path.is_file() else None


# True when the template card titled `name` shows a loaded thumbnail (the nearest ancestor with an <img>).
CARD_THUMBNAIL_LOADED = """(name) => {
  const title = Array.from(document.querySelectorAll('.p-dialog *'))
    .find(e => e.children.length === 0 && e.textContent.trim() === name);
  let card = title;
  while (card && !card.querySelector('img')) card = card.parentElement;
  const img = card && card.querySelector('img');
  return !!(img && img.complete && img.naturalWidth > 0);
}"""


def ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def declared_models() -> set[tuple[str, str]]:
    """(folder, file) of every model the UI workflows declare (their `models` lists: the frontend's
    missing-models check)."""
    found = set()
    for name in NAMES:
        for node in ui_workflow(name)["nodes"]:
            for model in node.get("properties", {}).get("models", []):
                found.add((model["directory"], model["name"]))
    return found


@pytest.fixture(scope="module")
def canvas(comfy_server, headless, tmp_path_factory):
    chromium, why = find_chromium()
    if chromium is None:
        print(f"\nbrowser tests skipped: {why}")
        pytest.skip(why)
    # Stand-ins named like the official weights, so the loaders' lists hold the workflows' values as on a
    # user's machine; they are never read: the prompt is rewritten to the tiny fixture loaders.
    stand_ins = []
    for folder, file_name in sorted(declared_models()):
        path = comfy_server.base_dir / "models" / folder / file_name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            stand_ins.append(path)

    def rewrite_prompt(api_graph):
        graph = headless.substitute_fixture_loaders(api_graph)
        return headless.shrink_graph(graph, max_side=64, caps={"steps": 2, "ref_res": 64})

    print(f"\nbrowser: {chromium}; screenshots in {SCREENSHOTS}")
    try:
        with Canvas.open(comfy_server.url, chromium, tmp_path_factory.mktemp("chromium-profile"), SCREENSHOTS,
                         rewrite_prompt=rewrite_prompt) as page:
            # First, on the fresh page (no run's notices yet), every workflow as it opens.
            page.opened = {name: open_as_saved(page, WORKFLOWS / f"{name}.json", name) for name in NAMES}
            core = core_template()
            if core is not None:
                page.opened[CORE_TEMPLATE] = open_as_saved(page, core, f"core_{CORE_TEMPLATE}")
            yield page
    finally:
        for path in stand_ins:
            path.unlink(missing_ok=True)


def assert_graph_is_the_workflow(canvas: Canvas, name: str, how: str):
    expected = ui_workflow(name)["nodes"]
    graph = canvas.graph()
    assert Counter(n["type"] for n in graph) == Counter(n["type"] for n in expected), f"{name} via {how}"
    missing = sorted({n["type"] for n in graph if not n["registered"]})
    assert not missing, f"{name} via {how}: node types the frontend does not know (missing nodes): {missing}"
    red = [f"{n['id']} {n['type']}" for n in graph if n["has_errors"]]
    assert not red, f"{name} via {how}: nodes marked with errors: {red}"
    dialogs = canvas.visible_dialogs()
    assert not dialogs, f"{name} via {how}: the frontend opened a dialog:\n" + "\n---\n".join(dialogs)
    # The widget values the user sees are the workflow's (the first values of each node's widgets_values:
    # the frontend adds no value widgets of its own except 'control_after_generate' after a seed).
    by_id = {n["id"]: n for n in graph}
    for node in expected:
        shown = by_id[node["id"]]
        saved = [v for v in node.get("widgets_values") or [] if v not in ("fixed", "randomize", "increment")]
        values = [v for v in shown["widgets_values"] if v not in ("fixed", "randomize", "increment")]
        assert values[:len(saved)] == saved, f"{name} via {how}: node {node['id']} {node['type']} shows {values}"


def overlap(a, b) -> float:
    """Area shared by two [left, top, right, bottom] boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def inside(box, area, slack: float = 1.0) -> bool:
    return (box[0] >= area[0] - slack and box[1] >= area[1] - slack and box[2] <= area[2] + slack
            and box[3] <= area[3] + slack)


def open_as_saved(canvas: Canvas, path: Path, shot_name: str) -> dict:
    """Drop a UI workflow and keep the view it saved; its view (Canvas.view), saved scale and screenshot, or
    {"error": ...} when it did not load (the tests using it fail; the others run)."""
    workflow = json.loads(path.read_text())
    try:
        canvas.drop_file(path, "application/json", len(workflow["nodes"]), fit_view=False)
    except Exception as exc:  # noqa: BLE001 - reported by the test that reads this view
        canvas.close_dialogs()
        return {"error": f"{path.name} did not load: {exc}"}
    view = canvas.view()
    view["saved_scale"] = workflow.get("extra", {}).get("ds", {}).get("scale")
    view["screenshot"] = canvas.screenshot(f"{shot_name}_opened")
    canvas.close_dialogs()
    return view


def layout_problems(view: dict) -> list[str]:
    """What keeps a user from reading the whole graph in the view it opened with."""
    problems = []
    if view["scale"] < MIN_SCALE:
        problems.append(f"scale {view['scale']:.3f} < {MIN_SCALE}: titles and widgets too small to read")
    for n in view["nodes"]:
        label = f"node {n['id']} {n['title'] or n['type']} at {[round(v) for v in n['box']]}"
        if not inside(n["box"], view["visible"]):
            problems.append(f"{label}: outside the visible canvas {view['visible']}")
        if any(overlap(n["box"], o) > 1 for o in view["overlays"]):
            problems.append(f"{label}: under the minimap or the zoom controls {view['overlays']}")
        if n["type"] not in NOTE_TYPES and not any(inside(n["box"], g["box"]) for g in view["groups"]):
            problems.append(f"{label}: in no group")
    for i, a in enumerate(view["nodes"]):
        for b in view["nodes"][i + 1:]:
            if overlap(a["box"], b["box"]) > 1:
                problems.append(f"nodes {a['id']} {a['type']} and {b['id']} {b['type']} overlap")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_whole_and_readable_in_its_groups(canvas, name):
    view = canvas.opened[name]
    assert "error" not in view, view.get("error")
    print(f"{name}: opens at scale {view['scale']:.3f}, {len(view['groups'])} groups; {view['screenshot']}")
    assert view["scale"] == pytest.approx(view["saved_scale"]), "the frontend did not restore the saved view"
    assert len(view["groups"]) >= 4, f"{name}: groups {[g['title'] for g in view['groups']]}"
    problems = layout_problems(view)
    assert not problems, f"{name} as it opens ({view['screenshot']}):\n" + "\n".join(problems)


def test_a_core_template_opens_the_same_way_for_comparison(canvas):
    """The yardstick: a core FLUX template opened like the shipped workflows, measured by the same checks."""
    view = canvas.opened.get(CORE_TEMPLATE)
    if view is None:
        pytest.skip(f"no {CORE_TEMPLATE}.json: comfyui_workflow_templates_media_image is not installed")
    assert "error" not in view, view.get("error")
    print(f"core template {CORE_TEMPLATE}: opens at scale {view['scale']:.3f}, {len(view['groups'])} groups; "
          f"{view['screenshot']}; by the same checks: {layout_problems(view) or 'no problems'}")
    assert view["scale"] == pytest.approx(view["saved_scale"])
    assert all(overlap(n["box"], view["visible"]) > 0 for n in view["nodes"])  # the measure sees its nodes


@pytest.mark.parametrize("name", NAMES)
def test_workflow_json_dropped_on_the_canvas_runs_and_shows_its_image(canvas, name):
    canvas.drop_file(WORKFLOWS / f"{name}.json", "application/json", len(ui_workflow(name)["nodes"]))
    assert_graph_is_the_workflow(canvas, name, "its JSON file")
    canvas.screenshot(f"{name}_loaded")
    seconds = canvas.run_and_wait_for_images()
    print(f"{name}: ran in the browser in {seconds:.1f} s")
    assert not canvas.visible_dialogs(), canvas.visible_dialogs()
    canvas.screenshot(f"{name}_output")


@pytest.mark.parametrize("name", NAMES)
def test_example_png_dropped_on_the_canvas_restores_the_workflow_and_runs(canvas, name):
    png = WORKFLOWS / "example_outputs" / f"{name}.png"
    canvas.drop_file(png, "image/png", len(ui_workflow(name)["nodes"]))
    assert_graph_is_the_workflow(canvas, name, png.name)
    canvas.screenshot(f"{name}_from_png")
    # The graph from the PNG queues and shows its image too. Its prompt equals the JSON run's, so ComfyUI
    # may answer from its cache; the 'executed' message and the drawn image are still this run's.
    canvas.run_and_wait_for_images()
    assert not canvas.visible_dialogs(), canvas.visible_dialogs()
    canvas.screenshot(f"{name}_from_png_output")


def test_template_browser_lists_every_workflow_with_its_thumbnail_and_loads_one(canvas):
    canvas.command("Comfy.BrowseTemplates")
    dialog = canvas.page.locator(".p-dialog").filter(has_text="Templates").first
    dialog.get_by_text("refcustom", exact=True).click()
    shown = []
    for name in NAMES:  # the grid loads thumbnails lazily: bring each card into view, then look at its image
        dialog.get_by_text(name, exact=True).first.scroll_into_view_if_needed()
        canvas.page.wait_for_function(CARD_THUMBNAIL_LOADED, arg=name, timeout=20000)
        shown.append(name)
    assert shown == NAMES
    canvas.screenshot("template_browser")
    dialog.get_by_text("dreamo_ip", exact=True).first.click()
    canvas.page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(ui_workflow("dreamo_ip")["nodes"]))
    canvas.page.wait_for_timeout(500)
    canvas.close_dialogs()
    assert_graph_is_the_workflow(canvas, "dreamo_ip", "the template browser")


def test_node_library_shows_one_category_with_descriptions_and_tooltips(canvas):
    definitions = canvas.page.evaluate("""() => Object.entries(LiteGraph.registered_node_types)
        .filter(([type]) => type.startsWith('RefCustom'))
        .map(([type, cls]) => ({type, category: cls.nodeData.category, description: cls.nodeData.description,
                                inputs: Object.fromEntries(['required', 'optional'].flatMap(k =>
                                  Object.entries((cls.nodeData.input || {})[k] || {}))
                                  .map(([n, spec]) => [n, (spec[1] || {}).tooltip || '']))}))""")
    ours = [d for d in definitions if not d["type"].startswith(FIXTURE_PREFIX)]
    assert len(ours) >= 10, [d["type"] for d in ours]
    assert {d["category"].split("/")[0] for d in ours} == {"refcustom"}, {d["type"]: d["category"] for d in ours}
    no_description = [d["type"] for d in ours if len((d["description"] or "").strip()) < 20]
    assert not no_description, f"nodes without a description: {no_description}"
    no_tooltip = [f"{d['type']}.{name}" for d in ours for name, tip in d["inputs"].items() if not tip.strip()]
    assert not no_tooltip, f"inputs without a tooltip: {no_tooltip}"

    canvas.page.get_by_role("button", name="Node Library (n)").click()
    library = canvas.page.locator(".side-bar-panel, .sidebar-content-container").first
    library.get_by_text("refcustom", exact=True).first.click()
    for subcategory in sorted({d["category"].split("/")[1] for d in ours if "/" in d["category"]}):
        library.get_by_text(subcategory, exact=True).first.click()
    canvas.page.wait_for_timeout(300)
    canvas.screenshot("node_library")
    canvas.page.get_by_role("button", name="Node Library (n)").click()


def test_without_chromium_the_reason_names_the_fix(monkeypatch):
    from . import browser

    monkeypatch.delenv(browser.CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    executable, why = browser.find_chromium()
    assert executable is None and "install Debian's chromium" in why and browser.CHROMIUM_ENV in why
    monkeypatch.setenv(browser.CHROMIUM_ENV, "/bin/sh")  # any executable file is taken as given
    assert browser.find_chromium() == ("/bin/sh", "")
