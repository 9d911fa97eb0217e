"""Where the ComfyUI frontend (1.27) draws a UI workflow's nodes and links, in graph units, from the saved
file alone: node boxes with their title bars, the slot positions links start and end at, and the links'
default shape (LiteGraph's spline: a cubic Bezier whose control points lie a quarter of the end-to-end
distance to the right of the output and to the left of the input). Checked against the positions the real
frontend reports for all example workflows (``getInputPos`` / ``getOutputPos``)."""

from __future__ import annotations

from typing import Iterator, Mapping

from comfyui_opensora.nodes.spec import spec_of

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar is drawn above a node's pos
SLOT_HEIGHT = 20  # LiteGraph.NODE_SLOT_HEIGHT: one row per socket
WIDGET_ROW = 24  # a one-line widget (20) and the gap below it (4)
WIDGETS_START = 6  # the first widget begins this far below the last socket row
SPLINE_SAMPLES = 200

Box = tuple[float, float, float, float]  # left, top, right, bottom
Point = tuple[float, float]


def node_box(node: Mapping) -> Box:
    """The rectangle a node covers on the canvas, title bar included."""
    x, y = node["pos"]
    return x, y - TITLE_HEIGHT, x + node["size"][0], y + node["size"][1]


def _socket_inputs(node: Mapping, node_classes: Mapping[str, type]) -> list[str]:
    """Names of the inputs drawn as sockets (one row each, in this order), as the frontend builds them from
    the node's definition; the saved ``inputs`` list when the type is not known here."""
    node_class = node_classes.get(node["type"])
    if node_class is None:
        return [s["name"] for s in node.get("inputs", []) if "widget" not in s]
    return [i.name for i in spec_of(node_class).inputs if not i.is_widget]


def _widget_inputs(node: Mapping, node_classes: Mapping[str, type]) -> list[str]:
    node_class = node_classes.get(node["type"])
    if node_class is None:
        return [s["widget"]["name"] for s in node.get("inputs", []) if "widget" in s]
    names = []
    for declared in spec_of(node_class).inputs:
        if declared.is_widget:
            names.append(declared.name)
            if declared.control_after_generate or (declared.type == "INT" and declared.name in ("seed", "noise_seed")):
                names.append("")  # the control_after_generate widget takes a row of its own
    return names


def output_position(node: Mapping, slot: int) -> Point:
    x, y = node["pos"]
    return x + node["size"][0] + 1 - SLOT_HEIGHT / 2, y + (slot + 0.7) * SLOT_HEIGHT


def input_position(node: Mapping, slot: int, node_classes: Mapping[str, type]) -> Point:
    """A socket input sits in its row; an input that feeds a widget is drawn at that widget (the rows of the
    widgets above it are counted as one-line widgets)."""
    x, y = node["pos"]
    saved = node["inputs"][slot]
    sockets = _socket_inputs(node, node_classes)
    if "widget" not in saved:
        return x + SLOT_HEIGHT / 2, y + (sockets.index(saved["name"]) + 0.7) * SLOT_HEIGHT
    rows = max(len(sockets), len(node.get("outputs", [])))
    above = _widget_inputs(node, node_classes).index(saved["widget"]["name"])
    return x + SLOT_HEIGHT / 2, y + rows * SLOT_HEIGHT + WIDGETS_START + above * WIDGET_ROW + SLOT_HEIGHT / 2


def link_ends(ui: Mapping, link: list, node_classes: Mapping[str, type]) -> tuple[Point, Point]:
    nodes = {n["id"]: n for n in ui["nodes"]}
    _, source, source_slot, target, target_slot, _ = link
    return output_position(nodes[source], source_slot), input_position(nodes[target], target_slot, node_classes)


def spline_points(start: Point, end: Point, samples: int = SPLINE_SAMPLES) -> Iterator[Point]:
    """Points along the link as LiteGraph's spline mode draws it."""
    reach = 0.25 * ((end[0] - start[0]) ** 2 + (end[1] - start[1]) ** 2) ** 0.5
    c1, c2 = (start[0] + reach, start[1]), (end[0] - reach, end[1])
    for i in range(samples + 1):
        t = i / samples
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
        yield (a * start[0] + b * c1[0] + c * c2[0] + d * end[0], a * start[1] + b * c1[1] + c * c2[1] + d * end[1])


def links_behind_nodes(ui: Mapping, node_classes: Mapping[str, type]) -> list[tuple[int, int]]:
    """(link id, node id) for every link whose drawn path enters the box of a node other than its two ends
    (the canvas draws links below the nodes, so that part of the link is hidden)."""
    hidden = []
    for link in ui["links"]:
        link_id, source, _, target, _, _ = link
        start, end = link_ends(ui, link, node_classes)
        points = list(spline_points(start, end))
        for node in ui["nodes"]:
            if node["id"] in (source, target):
                continue
            left, top, right, bottom = node_box(node)
            if any(left < px < right and top < py < bottom for px, py in points):
                hidden.append((link_id, node["id"]))
    return hidden
