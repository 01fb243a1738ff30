"""Checks of generated graphs against /object_info: types, links, slot types and widget counts."""

from __future__ import annotations

from .node_defs import FRONTEND_ONLY, NodeDef, input_type


def check_ui(ui: dict, object_info: dict) -> list[str]:
    """Problems in a UI workflow: unknown types, dangling or mistyped links, widget counts."""
    problems = []
    links = {lk[0]: lk for lk in ui["links"]}
    nodes = {n["id"]: n for n in ui["nodes"]}
    if len(links) != len(ui["links"]):
        problems.append("duplicate link ids")
    if ui["last_node_id"] < max(nodes) or ui["last_link_id"] < max(links, default=0):
        problems.append("last_node_id / last_link_id too small")
    for n in ui["nodes"]:
        t = n["type"]
        if t in FRONTEND_ONLY:
            continue
        if t not in object_info:
            problems.append(f"node {n['id']}: type {t} not in /object_info")
            continue
        d = NodeDef(t, object_info[t])
        expected_inputs = d.slot_inputs()
        if [(i["name"], i["type"]) for i in n["inputs"]] != [(a, b) for a, b, _ in expected_inputs]:
            problems.append(f"node {n['id']} {t}: inputs {n['inputs']} != {expected_inputs}")
        for slot, i in enumerate(n["inputs"]):
            if i["link"] is None:
                if not expected_inputs[slot][2]:
                    problems.append(f"node {n['id']} {t}: required input {i['name']} unconnected")
                continue
            lk = links.get(i["link"])
            if lk is None:
                problems.append(f"node {n['id']} {t}: input {i['name']} names missing link {i['link']}")
                continue
            _, src, src_slot, dst, dst_slot, typ = lk
            src_node = nodes.get(src)
            if dst != n["id"] or dst_slot != slot:
                problems.append(f"link {lk[0]} target {dst}:{dst_slot} != node {n['id']} slot {slot}")
            if src_node is None or src_slot >= len(src_node["outputs"]):
                problems.append(f"link {lk[0]}: source {src}:{src_slot} missing")
                continue
            if lk[0] not in (src_node["outputs"][src_slot]["links"] or []):
                problems.append(f"link {lk[0]} missing from node {src} output {src_slot} links")
            src_type = src_node["outputs"][src_slot]["type"]
            if not (src_type == typ == i["type"]):
                problems.append(f"link {lk[0]}: type {src_type} -> {i['type']} (link says {typ})")
        outs = d.outputs()
        if [(o["name"], o["type"]) for o in n["outputs"]] != outs:
            problems.append(f"node {n['id']} {t}: outputs differ from /object_info {outs}")
        for slot, o in enumerate(n["outputs"]):
            for lid in o["links"] or []:
                lk = links.get(lid)
                if lk is None or lk[1] != n["id"] or lk[2] != slot:
                    problems.append(f"node {n['id']} {t}: output {o['name']} lists link {lid} that is not its own")
        if len(n["widgets_values"]) != d.widget_count():
            problems.append(f"node {n['id']} {t}: {len(n['widgets_values'])} widgets_values, expected {d.widget_count()}")
    referenced = {i["link"] for n in ui["nodes"] for i in n["inputs"] if i["link"] is not None}
    if referenced != set(links):
        problems.append(f"links not used by any input: {sorted(set(links) - referenced)}")
    return problems


def check_api(api: dict, object_info: dict) -> list[str]:
    problems = []
    for nid, node in api.items():
        t = node["class_type"]
        if t not in object_info:
            problems.append(f"{nid}: {t} not in /object_info")
            continue
        d = NodeDef(t, object_info[t])
        specs = {name: spec for name, spec, _ in d.ordered_inputs()}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                src = api.get(value[0])
                if src is None:
                    problems.append(f"{nid}.{name}: link to missing node {value[0]}")
                    continue
                src_type = NodeDef(src["class_type"], object_info[src["class_type"]]).outputs()[value[1]][1]
                if src_type != input_type(specs[name]):
                    problems.append(f"{nid}.{name}: {src_type} into {input_type(specs[name])}")
    return problems
