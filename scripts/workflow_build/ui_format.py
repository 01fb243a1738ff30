"""UI-format (litegraph) graphs: links, execution order, a fixed column layout, widgets_values, the read-me note."""

from __future__ import annotations

import uuid

from .api_format import api_graph
from .blocks import MODEL_LINKS
from .graph import Graph, Node, Out
from .node_defs import NodeDef, input_options, input_type, is_widget


def layout_columns(g: Graph) -> dict[str, int]:
    """Column per node, left to right by graph depth, each node as far right as its consumers allow.

    Depth is the longest path from a source; then, consumers first, every node that feeds others moves
    to just left of its nearest consumer, so loaders, images and prompts sit next to where they are used.
    """
    parents = {n.id: [v.node for v in n.inputs.values() if isinstance(v, Out)] for n in g.nodes}
    children: dict[str, list[str]] = {n.id: [] for n in g.nodes}
    for nid, ps in parents.items():
        for p in ps:
            children[p].append(nid)
    depth = {n.id: topo_depth(n, g) for n in g.nodes}
    for nid in sorted(depth, key=lambda k: (-depth[k], int(k))):
        if children[nid]:
            depth[nid] = min(depth[c] for c in children[nid]) - 1
    shift = min(depth.values())
    return {k: v - shift for k, v in depth.items()}


def node_size(d: NodeDef) -> list[int]:
    """Roughly the size the frontend gives the node: title, slot rows, widget rows."""
    slots = max(len(d.slot_inputs()), len(d.outputs()))
    height = 30 + 22 * slots
    width = 320
    for _, spec, _ in d.ordered_inputs():
        if not is_widget(spec):
            continue
        opts = input_options(spec)
        if input_type(spec) == "STRING" and opts.get("multiline"):
            height += 120
            width = 400
        elif opts.get("image_upload"):
            height += 24 + 24 + 260  # combo, upload button, preview
        else:
            height += 24 * (1 + bool(opts.get("control_after_generate")))
    return [width, height + 10]


COLUMN_WIDTH = 460
NOTE_SIZE = [460, 560]
ROW_GAP = 40
TOP = 0


def ui_graph(g: Graph, defs: dict[str, NodeDef]) -> dict:
    api = api_graph(g, defs)
    columns = layout_columns(g)
    # Links in (target node, target slot) order.
    links = []
    slot_index = {}
    for node in g.nodes:
        d = defs[node.class_type]
        slot_index[node.id] = {name: i for i, (name, _, _) in enumerate(d.slot_inputs())}
    for node in g.nodes:
        d = defs[node.class_type]
        for name, _, _ in d.slot_inputs():
            v = node.inputs.get(name)
            if isinstance(v, Out):
                src_type = defs[g.nodes[int(v.node) - 1].class_type].outputs()[v.slot][1]
                links.append([len(links) + 1, int(v.node), v.slot, int(node.id), slot_index[node.id][name], src_type])

    # Execution order: a topological order (sources first, by id).
    order: dict[str, int] = {}
    ids_by_depth = sorted(g.nodes, key=lambda n: (topo_depth(n, g), int(n.id)))
    for i, n in enumerate(ids_by_depth):
        order[n.id] = i

    # Positions: one column per depth, stacked top to bottom in definition order.
    y_next: dict[int, int] = {}
    nodes_ui = []
    note_id = len(g.nodes) + 1
    for node in g.nodes:
        d = defs[node.class_type]
        col = columns[node.id]
        size = node_size(d)
        y = y_next.get(col, TOP)
        y_next[col] = y + size[1] + ROW_GAP
        inputs_ui = []
        for i, (name, typ, optional) in enumerate(d.slot_inputs()):
            link = next((lk[0] for lk in links if lk[3] == int(node.id) and lk[4] == i), None)
            entry = {"name": name, "type": typ, "link": link}
            if optional:
                entry["shape"] = 7
            inputs_ui.append(entry)
        outputs_ui = []
        for slot, (name, typ) in enumerate(d.outputs()):
            outputs_ui.append({
                "name": name, "type": typ, "slot_index": slot,
                "links": [lk[0] for lk in links if lk[1] == int(node.id) and lk[2] == slot],
            })
        entry = {
            "id": int(node.id),
            "type": node.class_type,
            "pos": [col * COLUMN_WIDTH, y],
            "size": size,
            "flags": {},
            "order": order[node.id],
            "mode": 0,
            "inputs": inputs_ui,
            "outputs": outputs_ui,
            "properties": {"Node name for S&R": node.class_type},
            "widgets_values": d.widget_values(api[node.id]["inputs"]),
        }
        if node.title:
            entry["title"] = node.title
        if node.color:
            entry["color"], entry["bgcolor"] = node.color
        models = [
            {"name": v, "url": MODEL_LINKS[v][0], "directory": MODEL_LINKS[v][1]}
            for k, v in sorted(node.inputs.items()) if isinstance(v, str) and v in MODEL_LINKS
        ]
        if models:
            entry["properties"]["models"] = models
        nodes_ui.append(entry)

    nodes_ui.append({
        "id": note_id, "type": "Note", "pos": [-COLUMN_WIDTH - 40, TOP], "size": NOTE_SIZE,
        "flags": {}, "order": len(g.nodes), "mode": 0, "inputs": [], "outputs": [],
        "title": "Read me: files and settings", "properties": {}, "widgets_values": [g.note],
        "color": "#432", "bgcolor": "#653",
    })
    width = (max(columns.values()) + 1) * COLUMN_WIDTH
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/refcustom/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": note_id,
        "last_link_id": len(links),
        "nodes": nodes_ui,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {
            "ds": {"scale": round(1600 / (width + COLUMN_WIDTH + 200), 3), "offset": [COLUMN_WIDTH + 140, 60]},
            "refcustom": {"description": g.description, "generator": "scripts/build_workflows.py"},
        },
        "version": 0.4,
    }


def topo_depth(node: Node, g: Graph) -> int:
    """Longest path from a source: a valid topological key for the litegraph `order` field."""
    parents = {n.id: [v.node for v in n.inputs.values() if isinstance(v, Out)] for n in g.nodes}
    memo: dict[str, int] = {}

    def dep(nid: str) -> int:
        if nid not in memo:
            memo[nid] = 1 + max((dep(p) for p in parents[nid]), default=-1)
        return memo[nid]

    return dep(node.id)
