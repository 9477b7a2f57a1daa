"""ROS 2 parameter files read without ROS, so the core builds what a node builds from one file.

A node declares dotted names (``safety.margin``) with defaults; its file in config/ nests them
(``safety: {margin: ...}``) under ``<node>: ros__parameters:``. :func:`node_parameters` gives
what the node would see: its defaults, then the file, then overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def load_parameters(file: str | os.PathLike, node: str | None = None) -> dict[str, Any]:
    """The dotted ``ros__parameters`` of ``node`` (default: the file's first) in a parameter file.

    ``file`` is a path or a file name in the package's config/ directory.
    """
    import yaml

    from roboalign_ros.robot import package_path

    path = Path(file)
    if not path.is_file():
        path = package_path("config", str(file))
    if not path.is_file():
        raise ValueError(f"parameter file: {file} not found (nor {path})")
    data = yaml.safe_load(path.read_text()) or {}
    if node is None:
        node = next(iter(data), None)
    block = data.get(node) if isinstance(data, Mapping) else None
    if not isinstance(block, Mapping) or not isinstance(block.get("ros__parameters"), Mapping):
        raise ValueError(f"parameter file {path}: no `{node}: ros__parameters:` mapping")
    return _flatten(block["ros__parameters"])


def node_parameters(defaults: Mapping[str, Any], file: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    node: str | None = None) -> dict[str, Any]:
    """``defaults``, updated from ``file`` and then ``overrides`` (dotted names).

    Names the node does not declare raise ``ValueError`` naming them; an integer given for a
    float parameter is taken as a float.
    """
    values = dict(defaults)
    for source, given in (("file", load_parameters(file, node) if file else {}),
                          ("overrides", overrides or {})):
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"{source}: unknown parameters {unknown}; known: {sorted(defaults)}")
        for name, value in given.items():
            if isinstance(defaults[name], float) and isinstance(value, int) \
                    and not isinstance(value, bool):
                value = float(value)
            values[name] = value
    return values
