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
    id: str
    class_type: str
    inputs: dict
    title: str | None = None
    color: str | None = None

    def __getitem__(self, slot: int) -> Out:
        return Out(self.id, slot)


@dataclass
class Graph:
    name: str
    description: str
    note: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, class_type: str, title: str | None = None, color: str | None = None, **inputs) -> Node:
        node = Node(str(len(self.nodes) + 1), class_type, inputs, title, color)
        self.nodes.append(node)
        return node
