"""A workflow as an API-format graph: nodes with literal inputs or links to other nodes' outputs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Out:
    """Output `slot` of node `node` (an API link)."""

    node: str
    slot: int


@dataclass
class Node:
    """One node. role: the UI group it sits in (layout.GROUPS); None takes layout.ROLE_BY_CLASS's."""

    id: str
    class_type: str
    inputs: dict
    title: str | None = None
    color: tuple[str, str] | None = None
    role: str | None = None

    def __getitem__(self, slot: int) -> Out:
        return Out(self.id, slot)


@dataclass
class Graph:
    """name: the file stem; description: one line (thumbnail, template browser); note: the read-me note's
    Markdown (blocks.read_me); group_titles: per-workflow titles for layout.GROUPS roles."""

    name: str
    description: str
    note: str
    nodes: list[Node] = field(default_factory=list)
    group_titles: dict[str, str] = field(default_factory=dict)

    def add(self, class_type: str, title: str | None = None, color: tuple[str, str] | None = None,
            role: str | None = None, **inputs) -> Node:
        node = Node(str(len(self.nodes) + 1), class_type, inputs, title, color, role)
        self.nodes.append(node)
        return node
