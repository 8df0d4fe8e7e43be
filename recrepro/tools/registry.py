"""The single definition of the seven tools: names, descriptions, arguments and implementations.

PAPER.md 1.3 [N] names the tools and their arguments; descriptions and formats are ours [G].
Everything else is generated from :data:`TOOL_SPECS`:

* :func:`tool_schemas` gives the JSON schemas transformers' chat templates accept for ``tools=``
  (``{"type": "function", "function": {"name", "description", "parameters"}}``);
* :class:`ToolMethods` gets one public method per tool, with the signature, type hints and
  Google-style docstring that ``transformers.utils.get_json_schema`` (and so TRL's
  ``environment_factory``) reads, producing exactly the same schema. The methods accept any
  arguments at run time and route them through :func:`validate_arguments`, so a missing, extra or
  mistyped argument becomes a counted tool error instead of a Python ``TypeError``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from recrepro.tools import impl
from recrepro.tools.base import ToolError, ToolResult

if TYPE_CHECKING:
    from recrepro.tools.toolkit import InstanceTools

JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: type
    description: str


@dataclass(frozen=True)
class ToolSpec:
    """One tool: what the model is told about it and the function that answers it."""

    name: str
    family: str  # PAPER.md 1.3's four families
    description: str
    parameters: tuple[ParamSpec, ...]
    implementation: Callable[..., str]  # (InstanceTools, **arguments) -> text

    def schema(self) -> dict[str, Any]:
        properties = {p.name: {"type": JSON_TYPES[p.type], "description": p.description} for p in self.parameters}
        parameters: dict[str, Any] = {"type": "object", "properties": properties}
        if self.parameters:
            # Omitted when empty, exactly as transformers' get_json_schema does for the methods, so a
            # prompt renders the same whether it is given these schemas or the bound methods.
            parameters["required"] = [p.name for p in self.parameters]
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}

    def docstring(self) -> str:
        """Google style, as ``transformers.utils.get_json_schema`` parses it."""
        text = self.description
        if self.parameters:
            text += "\n\nArgs:\n" + "\n".join(f"    {p.name}: {p.description}" for p in self.parameters)
        return text


_ITEM_NAME_HELP = ("The item's title as shown in the history or the candidate list, "
                   "or a candidate number such as [3].")

TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("get_user_profile", "user profile",
             "Get a short profile of the current user (interests, favourite categories, rating habits), "
             "written offline from their interactions before this request.",
             (), impl.get_user_profile),
    ToolSpec("item_info_search", "item information",
             "Look up one item: its categories, price, rating and popularity, counted from interactions "
             "before this request.",
             (ParamSpec("item_name", str, _ITEM_NAME_HELP),), impl.item_info_search),
    ToolSpec("candidates_analyze", "item information",
             "Summarise the candidate list: candidates grouped by category and price band, and which "
             "candidates share a category with the user's history.",
             (), impl.candidates_analyze),
    ToolSpec("get_session_behavior", "behaviour statistics",
             "Describe the user's most recent session (items close together in time) and how its categories "
             "differ from the earlier history.",
             (), impl.get_session_behavior),
    ToolSpec("get_rating_behavior", "behaviour statistics",
             "Group the user's history items by rating (high, neutral, low) and show which categories the user "
             "rates high or low.",
             (), impl.get_rating_behavior),
    ToolSpec("get_similar_items", "collaborative",
             "Find the items most similar to one item in a collaborative-filtering (SASRec) embedding space "
             "trained on past interactions; candidates among them are marked with their number.",
             (ParamSpec("item_title", str, _ITEM_NAME_HELP),), impl.get_similar_items),
    ToolSpec("get_similar_users", "collaborative",
             "Find users whose behaviour is most similar to the current user's (SASRec representations of their "
             "histories) and list their most recent items before this request; candidates are marked with their "
             "number.",
             (), impl.get_similar_users),
)
TOOLS: dict[str, ToolSpec] = {spec.name: spec for spec in TOOL_SPECS}
TOOL_NAMES: tuple[str, ...] = tuple(TOOLS)


def tool_schemas(names: list[str] | tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """JSON schemas of the named tools (all seven by default), in the registry's order."""
    chosen = TOOL_NAMES if names is None else tuple(names)
    unknown = [n for n in chosen if n not in TOOLS]
    if unknown:
        raise KeyError(f"unknown tool(s) {unknown}; known: {list(TOOL_NAMES)}")
    return [TOOLS[n].schema() for n in chosen]


def _type_word(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def validate_arguments(spec: ToolSpec, arguments: Any) -> dict[str, Any]:
    """Check ``arguments`` against ``spec``; raise :class:`ToolError` with a text the agent can act on."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise ToolError("bad_arguments", f"Error: the arguments of {spec.name} must be a JSON object, "
                                         f"got {_type_word(arguments)}.")
    names = [p.name for p in spec.parameters]
    extra = sorted(str(k) for k in arguments if k not in names)
    if extra:
        takes = "no arguments; call it with {}" if not names else "only " + ", ".join(f'"{n}"' for n in names)
        raise ToolError("unexpected_argument", f'Error: {spec.name} got unexpected argument(s) '
                                               f'{", ".join(repr(e) for e in extra)}; it takes {takes}.')
    for param in spec.parameters:
        if param.name not in arguments:
            raise ToolError("missing_argument", f'Error: {spec.name} needs the argument "{param.name}" '
                                                f"({JSON_TYPES[param.type]}).")
        value = arguments[param.name]
        # bool is an int subclass in Python; JSON keeps them apart, so do we.
        if type(value) is not param.type and not (param.type is float and type(value) is int):
            raise ToolError("wrong_type", f'Error: "{param.name}" must be a {JSON_TYPES[param.type]}, '
                                          f"got {_type_word(value)}.")
        if param.type is str and not value.strip():
            raise ToolError("empty_argument", f'Error: "{param.name}" is empty; pass an item title from the '
                                              "history or the candidate list.")
    return {name: arguments[name] for name in names}


class ToolMethods:
    """Mixin with one public method per tool; subclasses implement :meth:`_call_tool`.

    An environment for TRL's ``environment_factory`` can inherit this and forward ``_call_tool`` to
    its bound :class:`~recrepro.tools.toolkit.InstanceTools`; its public methods are then exactly the
    seven tools (plus whatever public methods the subclass adds itself).
    """

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        raise NotImplementedError


def _make_method(spec: ToolSpec) -> Callable[..., str]:
    names = [p.name for p in spec.parameters]

    def method(self: ToolMethods, *args: Any, **kwargs: Any) -> str:
        arguments: dict[str, Any] = dict(kwargs)
        for position, value in enumerate(args):
            # Positional values fill the declared names in order; surplus ones become unexpected names.
            key = names[position] if position < len(names) and names[position] not in arguments \
                else f"positional argument {position + 1}"
            arguments[key] = value
        return self._call_tool(spec.name, arguments).text

    method.__name__ = spec.name
    method.__qualname__ = f"ToolMethods.{spec.name}"
    method.__doc__ = spec.docstring()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=p.type)
               for p in spec.parameters]
    method.__signature__ = inspect.Signature(params, return_annotation=str)  # type: ignore[attr-defined]
    # No "return" hint here on purpose: get_json_schema would add a "return" entry to the schema.
    method.__annotations__ = {p.name: p.type for p in spec.parameters}
    return method


for _spec in TOOL_SPECS:
    setattr(ToolMethods, _spec.name, _make_method(_spec))
del _spec
