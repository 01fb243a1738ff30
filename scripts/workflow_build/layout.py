"""Where a UI workflow's nodes go: titled groups by role, groups in columns, and a saved view that fits.

Left to right: the read-me note | Models | Prompt over References (the inputs a user changes, where the eye
lands first) | Guidance over Sampling | Output. Each node's group is its `role` (set where the workflow is
defined) or, by default, its class type's in ROLE_BY_CLASS. Inside a group nodes stack top to bottom in
definition order; in a `chains` group every source (a LoadImage, a SolidMask) starts a column of its own
that the nodes it feeds join, so each reference image sits above the DreamO Reference it feeds.

Sizes follow the frontend's own `computeSize` (frontend 1.35.9: title 30, slot row 20, widget row 24, a
multiline text box 54, an image preview 224) with room added for text boxes and previews, so the saved
sizes are never smaller than what the frontend computes and nothing moves or overlaps on load
(tests/server/test_browser_canvas.py checks that in Chromium).

The saved view (`extra.ds`) shows the whole graph in a 1600x1000 window: the frontend restores it on load
(setting Comfy.EnableWorkflowViewRestore, on by default) as screen = (canvas + offset) * scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph, Node, Out
from .node_defs import NodeDef, has_control_widget, input_options, input_type, is_widget


@dataclass(frozen=True)
class GroupStyle:
    """title: the group's default title; column: 0 Models, 1 the user's inputs, 2 guidance and sampling,
    3 output; chains: side-by-side chains (one per source) instead of one stack; split: a stack taller than
    SPLIT_ABOVE may become two columns (SamplerCustomAdvanced's five nodes) where that lets the view zoom in."""

    title: str
    color: str
    column: int
    chains: bool = False
    split: bool = False


# Every role, in each column from top to bottom in this order. Colours: litegraph's group palette
# (LGraphCanvas.node_colors[...].groupcolor); Models in the core templates' blue.
GROUPS = {
    "models": GroupStyle("Models", "#3f789e", 0),
    "prompt": GroupStyle("Prompt", "#8A8", 1),
    "references": GroupStyle("References", "#b58b2a", 1, chains=True),
    "mask": GroupStyle("Subject mask", "#8AA", 1, chains=True),
    "shared": GroupStyle("Shared attention", "#a1309b", 2),
    "guidance": GroupStyle("Guidance", "#88A", 2),
    "sampling": GroupStyle("Sampling", "#3f789e", 2, split=True),
    "output": GroupStyle("Output", "#b06634", 3),
}

# A node's role when its definition names none.
ROLE_BY_CLASS = {
    **dict.fromkeys(("UNETLoader", "DualCLIPLoader", "VAELoader", "RefCustom_DreamOLoader", "RefCustom_AlignGenLoader",
                     "StyleModelLoader", "CLIPVisionLoader"), "models"),
    **dict.fromkeys(("RefCustom_DreamOTextEncode", "RefCustom_AlignGenConditioning", "CLIPTextEncode"), "prompt"),
    **dict.fromkeys(("LoadImage", "RefCustom_DreamOReference", "CLIPVisionEncode", "FluxKontextImageScale",
                     "VAEEncode", "ReferenceLatent"), "references"),
    **dict.fromkeys(("SolidMask", "MaskComposite", "MaskToImage", "RepeatImageBatch", "ImageToMask"), "mask"),
    **dict.fromkeys(("RefCustom_MaskedSharedAttention", "RefCustom_SharedAttentionReference"), "shared"),
    **dict.fromkeys(("FluxGuidance", "RefCustom_GuidanceBranches", "RefCustom_NormalizedGuidanceGuider",
                     "RefCustom_TrueCFGGuider"), "guidance"),
    **dict.fromkeys(("EmptySD3LatentImage", "KSampler", "RandomNoise", "KSamplerSelect", "BasicScheduler",
                     "SamplerCustomAdvanced"), "sampling"),
    **dict.fromkeys(("VAEDecode", "SaveImage"), "output"),
}

# The frontend's node metrics (LiteGraph in frontend 1.35.9) and this layout's spacing, in canvas units.
TITLE_H, SLOT_H, WIDGET_H, NODE_PAD_H = 30, 20, 24, 14
MULTILINE_H = 54  # a multiline text widget's minimum
PREVIEW_H = 224  # LoadImage's image preview
PROMPT_EXTRA_H = 66  # a prompt's text box: about five lines
NODE_W, CHAIN_NODE_W = 300, 260  # widths of a stacked node and of one in a chain (side by side)
TITLE_CHAR_W, TITLE_PAD_W = 8.5, 30  # a title's width: 14 px font, about 7.5 units a character, plus the dot
SAVE_IMAGE = (320, 340)
NOTE_W = 400
GROUP_HEADER, GROUP_PAD, NODE_GAP, GROUP_GAP, COLUMN_GAP = 46, 12, 24, 30, 40
SPLIT_ABOVE = 600
GROUP_FONT_SIZE = 24  # the core templates' groups

# The canvas a user sees in a 1600x1000 window with frontend 1.35.9's default chrome (measured in
# Chromium): the graph canvas panel right of the 59 px sidebar and below the tabs and the breadcrumb/Run
# bar, less the minimap and zoom controls in its bottom-right corner. Screen pixels.
WINDOW = (1600, 1000)
VISIBLE = (63, 90, 1596, 996)  # x0, y0, x1, y1
MINIMAP = (1342, 742, 1596, 996)
VIEW_MARGIN = 24
# Scale of the saved view: at least MIN_SCALE, at most MAX_SCALE. Below 8/14 = 0.571 (the setting
# LiteGraph.Canvas.MinFontSizeForLOD, 8 px, over the 14 px node font) the frontend stops drawing titles'
# and widgets' text at all; 0.6 draws the 14 px titles at 8.4 px and the 12 px widget text at 7.2 px. The
# core FLUX templates save 0.37-0.66 (flux_redux_model_example 0.37, flux_kontext_dev_basic 0.52,
# flux_depth_lora_example 0.62, flux_dev_full_text_to_image 0.66).
MIN_SCALE = 0.6
MAX_SCALE = 1.0


def role_of(node: Node) -> str:
    role = node.role or ROLE_BY_CLASS.get(node.class_type)
    if role not in GROUPS:
        raise ValueError(f"node {node.id} {node.class_type}: no group for role {role!r}; give it a role= or add its "
                         f"class to layout.ROLE_BY_CLASS (roles: {', '.join(GROUPS)})")
    return role


def node_size(node: Node, d: NodeDef) -> list[int]:
    """[width, height] (the body, below the title) as the frontend computes it, plus room for a prompt's text
    and images."""
    if node.class_type == "SaveImage":
        return list(SAVE_IMAGE)
    title = node.title or d.info.get("display_name") or node.class_type
    width = max(CHAIN_NODE_W if GROUPS[role_of(node)].chains else NODE_W, round(TITLE_CHAR_W * len(title)) + TITLE_PAD_W)
    rows = max(len(d.slot_inputs()), len(d.outputs()))
    height = SLOT_H * rows + NODE_PAD_H
    for name, spec, _ in d.ordered_inputs():
        if not is_widget(spec):
            continue
        opts = input_options(spec)
        if input_type(spec) == "STRING" and opts.get("multiline"):
            height += MULTILINE_H + (PROMPT_EXTRA_H if role_of(node) == "prompt" else 0)
        else:
            height += WIDGET_H * (1 + has_control_widget(name, spec))
            if opts.get("image_upload"):
                height += WIDGET_H + PREVIEW_H  # the upload button and the preview
    return [width, height]


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h


@dataclass
class Layout:
    """pos/size per node id (litegraph's: pos is the body's top-left, the title sits above it), the groups
    as (role, title, box), the note's pos/size and the saved view."""

    pos: dict[str, list[float]]
    size: dict[str, list[float]]
    groups: list[tuple[str, str, Box]]
    note_pos: list[float]
    note_size: list[float]
    ds: dict


def chains(members: list[Node]) -> list[list[Node]]:
    """Split a group into columns: a node without a parent in the group starts one; any other joins its
    newest parent's column (a DreamO Reference joins its image's column, not the previous reference's)."""
    column_of: dict[str, int] = {}
    out: list[list[Node]] = []
    ids = {n.id for n in members}
    for node in members:
        parents = [v.node for v in node.inputs.values() if isinstance(v, Out) and v.node in ids]
        if parents:
            column_of[node.id] = max(column_of[p] for p in parents)
        else:
            column_of[node.id] = len(out)
            out.append([])
        out[column_of[node.id]].append(node)
    return out


def split(members: list[Node], size: dict[str, list[float]]) -> list[list[Node]]:
    """One stack, or two of about equal height (in definition order) when it is taller than SPLIT_ABOVE."""
    total = stack_height(members, size)
    if total <= SPLIT_ABOVE:
        return [members]
    left: list[Node] = []
    while stack_height(left, size) < (total - NODE_GAP) / 2:
        left.append(members[len(left)])
    return [left, members[len(left):]]


def stack_height(nodes: list[Node], size: dict[str, list[float]]) -> float:
    return sum(TITLE_H + size[n.id][1] for n in nodes) + NODE_GAP * max(len(nodes) - 1, 0)


def layout(g: Graph, defs: dict[str, NodeDef]) -> Layout:
    """The layout whose saved view has the larger scale: tall `split` groups in one column or in two."""
    best = max((arrange(g, defs, split_tall) for split_tall in (False, True)), key=lambda lay: lay.ds["scale"])
    if best.ds["scale"] < MIN_SCALE:
        raise ValueError(f"{g.name}: fitting the layout in a {WINDOW[0]}x{WINDOW[1]} window takes scale "
                         f"{best.ds['scale']}, below the readable {MIN_SCALE}: make it more compact")
    return best


def arrange(g: Graph, defs: dict[str, NodeDef], split_tall: bool) -> Layout:
    size = {n.id: node_size(n, defs[n.class_type]) for n in g.nodes}
    members: dict[str, list[Node]] = {}
    for n in g.nodes:
        members.setdefault(role_of(n), []).append(n)
    roles = [r for r in GROUPS if r in members]
    # Each group's columns (one for a stack) and natural inner size.
    columns = {r: chains(members[r]) if GROUPS[r].chains else split(members[r], size)
               if GROUPS[r].split and split_tall else [members[r]] for r in roles}
    inner_w = {r: sum(max(size[n.id][0] for n in col) for col in columns[r]) + NODE_GAP * (len(columns[r]) - 1)
               for r in roles}
    inner_h = {r: max(stack_height(col, size) for col in columns[r]) for r in roles}
    by_column: dict[int, list[str]] = {}
    for r in roles:
        by_column.setdefault(GROUPS[r].column, []).append(r)
    # Columns left to right; the groups of one column share its width.
    pos: dict[str, list[float]] = {}
    groups: list[tuple[str, str, Box]] = []
    x, bottom = 0.0, 0.0
    for c in sorted(by_column):
        width = max(inner_w[r] for r in by_column[c]) + 2 * GROUP_PAD
        y = 0.0
        for r in by_column[c]:
            box = Box(x, y, width, GROUP_HEADER + inner_h[r] + GROUP_PAD)
            groups.append((r, g.group_titles.get(r, GROUPS[r].title), box))
            cx = x + GROUP_PAD
            for col in columns[r]:
                cy = y + GROUP_HEADER
                col_w = max(size[n.id][0] for n in col)
                for n in col:
                    if len(columns[r]) == 1:
                        size[n.id][0] = width - 2 * GROUP_PAD  # one stack: as wide as its column
                    pos[n.id] = [cx, cy + TITLE_H]
                    cy += TITLE_H + size[n.id][1] + NODE_GAP
                cx += col_w + NODE_GAP
            y = box.bottom + GROUP_GAP
        bottom = max(bottom, y - GROUP_GAP)
        x += width + COLUMN_GAP
    right = x - COLUMN_GAP
    note_pos = [-(NOTE_W + COLUMN_GAP), TITLE_H]
    note_size = [NOTE_W, bottom - TITLE_H]
    return Layout(pos, size, groups, note_pos, note_size, saved_view(Box(note_pos[0], 0, right - note_pos[0], bottom)))


def saved_view(bbox: Box) -> dict:
    """extra.ds showing `bbox` (canvas units) in the visible canvas: as large as fits, centred across, from the
    top (the minimap and zoom controls take the bottom-right corner)."""
    free_w = VISIBLE[2] - VISIBLE[0] - 2 * VIEW_MARGIN
    free_h = VISIBLE[3] - VISIBLE[1] - 2 * VIEW_MARGIN
    scale = min(free_w / bbox.w, free_h / bbox.h, MAX_SCALE)
    scale = int(scale * 1000) / 1000  # saved rounded down: still fits
    centre_x = (VISIBLE[0] + VISIBLE[2]) / 2
    offset = [round(centre_x / scale - (bbox.x + bbox.w / 2), 1), round((VISIBLE[1] + VIEW_MARGIN) / scale - bbox.y, 1)]
    return {"scale": scale, "offset": offset}


def on_screen(box: Box, ds: dict) -> Box:
    """A canvas-unit box in screen pixels under the saved view."""
    s, (ox, oy) = ds["scale"], ds["offset"]
    return Box((box.x + ox) * s, (box.y + oy) * s, box.w * s, box.h * s)


def hidden_nodes(lay: Layout) -> list[str]:
    """Ids of nodes (title included) the saved view leaves outside the visible canvas or under the minimap."""
    hidden = []
    boxes = {nid: Box(p[0], p[1] - TITLE_H, lay.size[nid][0], lay.size[nid][1] + TITLE_H) for nid, p in lay.pos.items()}
    boxes["note"] = Box(lay.note_pos[0], lay.note_pos[1] - TITLE_H, lay.note_size[0], lay.note_size[1] + TITLE_H)
    for nid, box in boxes.items():
        s = on_screen(box, lay.ds)
        inside = VISIBLE[0] <= s.x and s.right <= VISIBLE[2] and VISIBLE[1] <= s.y and s.bottom <= VISIBLE[3]
        under_minimap = s.right > MINIMAP[0] and s.bottom > MINIMAP[1]
        if not inside or under_minimap:
            hidden.append(nid)
    return hidden
