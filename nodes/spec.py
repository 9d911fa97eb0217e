"""Declarative node inputs and outputs, and the registry of the pack's nodes.

A node class states what it takes and gives once, as a :class:`NodeSpec` in its ``SPEC`` attribute, and
``@register(node_id, display_name)`` adds it to :data:`REGISTRY` and renders ComfyUI's V1 declaration from
the spec (``INPUT_TYPES``, ``RETURN_TYPES``, ``RETURN_NAMES``, ...). The standalone workflow runner and the
tests read the same specs (:func:`spec_of`), so widget names, order, defaults and ranges have one home.
Saved workflows store widget values by position: the order of ``NodeSpec.inputs`` is part of the contract.

Behaviour that is code, not data (``VALIDATE_INPUTS``, ``IS_CHANGED``), stays a classmethod on the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

COMBO = "COMBO"  # a dropdown: V1 writes the list of choices in place of the type
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")  # types ComfyUI shows as widgets (besides COMBO)
CATEGORY = "Open-Sora"

Choices = Iterable[str] | Callable[[], Iterable[str]]


@dataclass(frozen=True)
class Input:
    """One input: a socket (``type`` such as "OPENSORA_MODEL"), a widget ("INT", "FLOAT", "STRING",
    "BOOLEAN") or a dropdown (``choices``; a callable is asked each time the node is listed, for choices
    read from model folders). ``None`` leaves an option out of the V1 declaration."""

    name: str
    type: str = COMBO
    tooltip: str | None = None
    default: Any = None
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = None
    choices: Choices | None = None
    optional: bool = False
    multiline: bool = False
    force_input: bool = False  # a widget type shown as a socket only
    control_after_generate: bool = False  # the seed widget's randomize/fixed control (one more UI value)

    def __post_init__(self) -> None:
        if (self.type == COMBO) != (self.choices is not None):
            raise ValueError(f"input {self.name!r}: a {COMBO} input needs choices, other types take none.")

    @property
    def is_widget(self) -> bool:
        """Whether the frontend shows it as a widget (and stores its value in ``widgets_values``)."""
        return not self.force_input and (self.type == COMBO or self.type in WIDGET_TYPES)

    def choice_list(self) -> list[str]:
        """The dropdown's choices now (read again from the folders for a callable)."""
        choices = self.choices() if callable(self.choices) else self.choices
        return list(choices or ())

    def v1(self) -> tuple:
        """``(TYPE, {options})`` as ``INPUT_TYPES`` writes it (options in ComfyUI's usual order)."""
        options = {
            "forceInput": self.force_input or None,
            "multiline": self.multiline or None,
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "step": self.step,
            "control_after_generate": self.control_after_generate or None,
            "tooltip": self.tooltip,
        }
        kind = self.choice_list() if self.type == COMBO else self.type
        return (kind, {key: value for key, value in options.items() if value is not None})


@dataclass(frozen=True)
class Output:
    """One output socket; ``is_list`` marks an output that hands a list (one value per video)."""

    type: str
    name: str | None = None
    tooltip: str | None = None
    is_list: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """What a node takes and gives. ``hidden`` maps argument names to ComfyUI's hidden values ("PROMPT",
    "EXTRA_PNGINFO", "UNIQUE_ID"); ``input_is_list`` hands every input as a list (ComfyUI's
    ``INPUT_IS_LIST``); ``output_node`` makes the node a sink that runs the graph feeding it."""

    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    description: str | None = None
    hidden: Mapping[str, str] = field(default_factory=dict)
    output_node: bool = False
    input_is_list: bool = False
    category: str | None = CATEGORY
    function: str = "execute"

    def __post_init__(self) -> None:
        optional = [i.optional for i in self.inputs]
        if optional != sorted(optional):  # V1 lists required inputs first: the order must say the same
            raise ValueError("declare the required inputs before the optional ones (the widget order).")

    def input_types(self) -> dict:
        """ComfyUI's V1 ``INPUT_TYPES()`` dict (required, then optional and hidden when there are any)."""
        declared: dict[str, dict] = {"required": {i.name: i.v1() for i in self.inputs if not i.optional}}
        optional = {i.name: i.v1() for i in self.inputs if i.optional}
        if optional:
            declared["optional"] = optional
        if self.hidden:
            declared["hidden"] = dict(self.hidden)
        return declared

    def v1_attributes(self) -> dict[str, Any]:
        """The V1 class attributes besides ``INPUT_TYPES``; unset ones are left out, as ComfyUI's defaults."""
        outputs = self.outputs
        attributes: dict[str, Any] = {"RETURN_TYPES": tuple(o.type for o in outputs)}
        if outputs and all(o.name for o in outputs):
            attributes["RETURN_NAMES"] = tuple(o.name for o in outputs)
        if any(o.tooltip for o in outputs):
            attributes["OUTPUT_TOOLTIPS"] = tuple(o.tooltip or "" for o in outputs)
        if any(o.is_list for o in outputs):
            attributes["OUTPUT_IS_LIST"] = tuple(o.is_list for o in outputs)
        attributes["FUNCTION"] = self.function
        if self.output_node:
            attributes["OUTPUT_NODE"] = True
        if self.input_is_list:
            attributes["INPUT_IS_LIST"] = True
        if self.category is not None:
            attributes["CATEGORY"] = self.category
        if self.description:
            attributes["DESCRIPTION"] = self.description
        return attributes

    @classmethod
    def from_v1(cls, node: type) -> NodeSpec:
        """Read a spec from a hand-written V1 class (ComfyUI's core nodes and their stand-ins); the one
        place that parses the tuple format. Choices are read once, now."""
        declared = node.INPUT_TYPES()
        inputs = []
        for section in ("required", "optional"):
            for name, entry in declared.get(section, {}).items():
                kind = entry[0]
                options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                combo = isinstance(kind, (list, tuple))
                inputs.append(Input(
                    name, COMBO if combo else kind, options.get("tooltip"), options.get("default"),
                    min=options.get("min"), max=options.get("max"), step=options.get("step"),
                    choices=list(kind) if combo else None, optional=section == "optional",
                    multiline=bool(options.get("multiline")), force_input=bool(options.get("forceInput")),
                    control_after_generate=bool(options.get("control_after_generate"))))
        names = getattr(node, "RETURN_NAMES", None) or ()
        list_outputs = getattr(node, "OUTPUT_IS_LIST", None) or ()
        outputs = tuple(
            Output(kind, names[i] if i < len(names) else None, None, i < len(list_outputs) and list_outputs[i])
            for i, kind in enumerate(getattr(node, "RETURN_TYPES", ())))
        return cls(tuple(inputs), outputs, description=getattr(node, "DESCRIPTION", None),
                   hidden=dict(declared.get("hidden", {})), output_node=bool(getattr(node, "OUTPUT_NODE", False)),
                   input_is_list=bool(getattr(node, "INPUT_IS_LIST", False)),
                   category=getattr(node, "CATEGORY", None), function=node.FUNCTION)


def spec_of(node: type) -> NodeSpec:
    """The spec of a node class: its ``SPEC``, or one read from its V1 declaration."""
    declared = node.__dict__.get("SPEC")
    return declared if isinstance(declared, NodeSpec) else NodeSpec.from_v1(node)


def declare(node: type) -> type:
    """Class decorator: give ``node`` the V1 declaration rendered from its ``SPEC`` (no registration;
    for the standalone stand-ins of core nodes)."""
    spec: NodeSpec = node.__dict__["SPEC"]
    node.INPUT_TYPES = classmethod(lambda cls: spec.input_types())
    for name, value in spec.v1_attributes().items():
        setattr(node, name, value)
    return node


@dataclass(frozen=True)
class RegisteredNode:
    node_id: str
    display_name: str
    node: type


# Every node of the pack, in the order the node modules registered them (node id -> entry).
REGISTRY: dict[str, RegisteredNode] = {}


def register(node_id: str, display_name: str) -> Callable[[type], type]:
    """Class decorator: declare the node from its ``SPEC`` and add it to :data:`REGISTRY` under the id saved
    workflows use (ids and display names never change once published)."""

    def add(node: type) -> type:
        known = REGISTRY.get(node_id)
        if known is not None and known.node.__qualname__ != node.__qualname__:
            raise ValueError(f"node id {node_id!r} is taken by {known.node.__qualname__}.")
        REGISTRY[node_id] = RegisteredNode(node_id, display_name, declare(node))
        return node

    return add
