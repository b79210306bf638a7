"""Small validation helpers whose messages name the parameter, the bad value and what is allowed."""

from __future__ import annotations

from typing import Any, Iterable


def check_value(value: Any, allowed: Iterable[Any], name: str) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a precise ``ValueError``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"Invalid value for the '{name}' parameter. Allowed values are "
            f"{', '.join(repr(a) for a in allowed)}, but got {value!r} instead."
        )
    return value


def check_positive(value: float, name: str, *, strict: bool = True) -> float:
    """Return ``value`` if it is a positive number (or non-negative if not ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"The '{name}' parameter must be a number, but got {value!r} instead.")
    if value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"Invalid value for the '{name}' parameter: {value!r}. Allowed: a number {bound}.")
    return value
