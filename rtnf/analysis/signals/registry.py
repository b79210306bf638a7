"""Finding a feedback signal's class: a built-in name, a ``rtnf.signals`` entry point, or ``module:Class``."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from .base import FeedbackSignal, SignalError

ENTRY_POINT_GROUP = "rtnf.signals"
BUILTIN = {
    "connectivity": "rtnf.analysis.signals.connectivity:SlidingCorrelation",
    "ppi": "rtnf.analysis.signals.connectivity:PsychophysiologicalInteraction",
    "decoder": "rtnf.analysis.signals.decoder:DecodedFeedback",
    "pattern": "rtnf.analysis.signals.pattern:PatternExpression",
}
"""Signals that come with rtnf, by the name a config uses."""


def load_signal_class(spec: str) -> type[FeedbackSignal]:
    """The class of ``spec``: a built-in name, an entry point's name, or ``"module:Class"``.

    Raises
    ------
    SignalError
        When nothing by that name exists or it is not a :class:`FeedbackSignal`.
    """
    target = BUILTIN.get(spec)
    if target is None and ":" not in spec:
        found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            installed = sorted({*BUILTIN, *(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))})
            raise SignalError(f"no feedback signal named {spec!r}. Allowed: {', '.join(installed)}, "
                              "or 'module:Class'")
        target = found[0].value
    module_name, _, class_name = (target or spec).partition(":")
    if not module_name or not class_name:
        raise SignalError(f"{spec!r} is not 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # noqa: BLE001 - any failure of a plugin's import is one message, not a traceback
        raise SignalError(f"cannot load the feedback signal {spec!r} ({type(exc).__name__}: {exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, FeedbackSignal)):
        raise SignalError(f"{spec!r} is not a feedback signal (a subclass of rtnf.analysis.signals.FeedbackSignal)")
    return cls


def make_signal(name: str, table: dict[str, Any]) -> FeedbackSignal:
    """Build signal ``name`` from its config table (``class`` and the signal's own keys).

    Raises
    ------
    SignalError
        One message naming the table's key that is wrong.
    """
    settings = dict(table)
    spec = settings.pop("class", None)
    if not isinstance(spec, str) or not spec:
        raise SignalError(f"signals.{name}: a 'class' is required (a built-in name: {', '.join(BUILTIN)}; "
                          "an installed plugin's name; or 'module:Class')")
    cls = load_signal_class(spec)
    try:
        config = cls.Config.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SignalError(f"invalid value for 'signals.{name}.{where}': {first['msg']}") from None
    return cls(name, config)
