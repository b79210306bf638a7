"""Pydantic validation errors as one message naming the key, the bad value and what is allowed.

Shared by the session config (:mod:`rtnf.config`) and the screen's display
settings (:mod:`rtnf.wire.display`); imports only pydantic and the standard library.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError


def format_validation_error(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """One message for all of ``exc``'s errors (one line each when there are several).

    Parameters
    ----------
    exc : ValidationError
        What pydantic raised when validating ``root``.
    root : type of BaseModel
        The model that was validated (to list the allowed keys).
    prefix : str
        Dotted key of ``root`` in the file (e.g. ``"display"``), or "" at the top.
    """
    lines = [_format_error(err, root, prefix) for err in exc.errors()]
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems:\n  " + "\n  ".join(lines)


def _dotted(loc: tuple[Any, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _format_error(err: Any, root: type[BaseModel], prefix: str) -> str:
    # Drop the names pydantic gives to validators and union branches: the key is what matters.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _dotted(loc, prefix)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        return f"unknown key '{key}'. Allowed keys here: {', '.join(allowed)}."
    if err["type"] == "missing":
        return f"missing key '{key}' (required)."
    value = err.get("input")
    shown = repr(value)
    if len(shown) > 80:  # a hostile or mistaken 900 kB text: say how long, not all of it
        shown = f"{shown[:60]}... ({len(value) if hasattr(value, '__len__') else len(shown)} characters)"
    shown = f"{shown} ({type(value).__name__})" if not isinstance(value, dict) else "a table"
    return f"invalid value for '{key}': {shown}. {err['msg']}."


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional to reach the model or container type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = [a for a in typing.get_args(annotation) if a is not type(None)][0]
        else:
            return annotation


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    node: Any = root
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) in (list, dict):
            node = typing.get_args(node)[-1]
    node = _unwrap(node)
    if typing.get_origin(node) is dict:
        node = _unwrap(typing.get_args(node)[-1])
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []
