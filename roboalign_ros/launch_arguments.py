"""Checks of launch argument values, for the package's launch files (no launch import here).

A launch file lists ``name: (default, description, check)`` and validates every value first
(``OpaqueFunction(function=validate_arguments, args=[ARGUMENTS])``), so a bad value stops the
launch with a message naming the argument, before a node gets it as a parameter and fails with
a type error that names neither. Each check returns None or what is wrong with the value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping

Check = Callable[[str], "str | None"]

# what launch_ros's ParameterValue(value_type=bool) reads as a bool (YAML 1.1)
_BOOLS = {"true", "false", "yes", "no", "on", "off"}


def boolean(value: str) -> str | None:
    """true/false (YAML: also yes/no/on/off, any case)."""
    return None if value.strip().lower() in _BOOLS else "not a boolean (true or false)"


def integer(minimum: int | None = None) -> Check:
    """An integer, at least ``minimum``."""
    def check(value: str) -> str | None:
        try:
            number = int(value.strip())
        except ValueError:
            return "not an integer"
        if minimum is not None and number < minimum:
            return f"must be >= {minimum}"
        return None
    return check


def number(low: float, high: float) -> Check:
    """A finite number in (``low``, ``high``]."""
    def check(value: str) -> str | None:
        try:
            x = float(value.strip())
        except ValueError:
            return "not a number"
        if not math.isfinite(x) or not low < x <= high:
            return f"must be in ({low:g}, {high:g}]"
        return None
    return check


def choice(*options: str) -> Check:
    """One of ``options`` (exactly)."""
    def check(value: str) -> str | None:
        return None if value in options else f"not one of {', '.join(options)}"
    return check


def pattern(regex: str, what: str) -> Check:
    """A value matching ``regex`` entirely; ``what`` describes the valid values."""
    compiled = re.compile(regex)

    def check(value: str) -> str | None:
        return None if compiled.fullmatch(value) else f"not {what}"
    return check


def text(required: bool = False) -> Check:
    """Free text without control characters (non-empty if ``required``)."""
    def check(value: str) -> str | None:
        if required and not value.strip():
            return "must not be empty"
        if any(unicodedata.category(c) == "Cc" for c in value):
            return "contains control characters"
        return None
    return check


DEVICE = pattern(r"auto|cpu|cuda(:\d+)?", "a device (auto, cpu, cuda or cuda:N)")


def problems(values: Mapping[str, str], checks: Mapping[str, Check]) -> list[str]:
    """``name:=value: what is wrong`` for every value its check refuses."""
    found = []
    for name, check in checks.items():
        if name in values:
            why = check(values[name])
            if why:
                found.append(f"{name}:={values[name]!r}: {why}")
    return found


def validate(values: Mapping[str, str], checks: Mapping[str, Check]) -> None:
    """Raise ValueError naming every bad argument of ``values``."""
    found = problems(values, checks)
    if found:
        raise ValueError("bad launch argument " + "; ".join(found))
