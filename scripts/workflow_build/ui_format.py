"""UI-format (litegraph) graphs: links, execution order, widgets_values, groups, the read-me note and the saved view
(positions, groups and view from layout.py)."""

from __future__ import annotations

import uuid

from .api_format import api_graph
from .blocks import MODEL_LINKS
from .graph import Graph, Node, Out
from .layout import GROUP_FONT_SIZE, GROUPS, hidden_nodes, layout
from .node_defs import NodeDef


def ui_graph(g: Graph, defs: dict[str, NodeDef]) -> dict:
    api = api_graph(g, defs)
    lay = layout(g, defs)
    hidden = hidden_nodes(lay)
    if hidden:
        raise ValueError(f"{g.name}: the saved view leaves nodes {hidden} off the visible canvas or under the minimap")
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

    nodes_ui = []
    note_id = len(g.nodes) + 1
    for node in g.nodes:
        d = defs[node.class_type]
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
            "pos": lay.pos[node.id],
            "size": lay.size[node.id],
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

    # The read-me: a MarkdownNote, as the core templates' notes (frontend-only, never in the API graph).
    nodes_ui.append({
        "id": note_id, "type": "MarkdownNote", "pos": lay.note_pos, "size": lay.note_size,
        "flags": {}, "order": len(g.nodes), "mode": 0, "inputs": [], "outputs": [],
        "title": "Read me: what it does, settings, files", "properties": {}, "widgets_values": [g.note],
        "color": "#432", "bgcolor": "#000",
    })
    groups = [{"id": i, "title": title, "bounding": [box.x, box.y, box.w, box.h], "color": GROUPS[role].color,
               "font_size": GROUP_FONT_SIZE, "flags": {}}
              for i, (role, title, box) in enumerate(lay.groups, start=1)]
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/refcustom/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": note_id,
        "last_link_id": len(links),
        "nodes": nodes_ui,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {
            "ds": lay.ds,
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
