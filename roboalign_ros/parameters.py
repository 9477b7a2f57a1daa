"""Node parameters, read without ROS: each node's spec, and the parameter files that set them.

Every node's parameters are declared once, in ``config/parameters/<node>.yaml``, in the schema
of ``generate_parameter_library`` (groups nest; each parameter has ``type``, ``default_value``,
``description``, optionally ``read_only`` and ``validation``). :class:`ParameterSpec` reads it:
the node declares and validates from it (``nodes/common.py``), the ROS-free core builds what
the node builds from it (:func:`node_parameters`), and ``docs/parameters.md`` is generated
from it (``python -m roboalign_ros.parameters``). A default lives there and nowhere else:
``config/<node>.yaml`` files set only what differs (``test/test_parameters.py`` checks).

A node's parameter file nests dotted names (``safety.margin``) as ``safety: {margin: ...}``
under ``<node>: ros__parameters:``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# generate_parameter_library's parameter types -> (python type of one value, is an array)
TYPES = {"bool": (bool, False), "int": (int, False), "double": (float, False),
         "string": (str, False), "bool_array": (bool, True), "int_array": (int, True),
         "double_array": (float, True), "string_array": (str, True)}
# the validators used here, named as generate_parameter_library names them
VALIDATORS = ("bounds<>", "gt<>", "gt_eq<>", "lt<>", "lt_eq<>", "one_of<>", "not_empty<>",
              "fixed_size<>", "size_lt<>", "element_bounds<>", "subset_of<>", "unique<>")
SPEC_DIR = ("config", "parameters")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One declared parameter: dotted name, type, default, description, rules."""

    name: str
    type: str
    default: Any
    description: str
    read_only: bool = False
    validation: Mapping[str, list] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: type {self.type!r} is not one of {sorted(TYPES)}")
        unknown = sorted(set(self.validation) - set(VALIDATORS))
        if unknown:
            raise ValueError(f"{self.name}: unknown validation {unknown}; known: {VALIDATORS}")
        if not self.description:
            raise ValueError(f"{self.name}: needs a description")
        object.__setattr__(self, "default", self.check(self.default, "default_value"))

    def check(self, value: Any, what: str = "") -> Any:
        """``value`` as this parameter's type (an int is taken for a double).

        Raises ValueError naming the parameter, the value and the rule it breaks.
        """
        name = f"{self.name}{f' ({what})' if what else ''}"
        scalar, is_array = TYPES[self.type]
        if is_array:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{name}: expected a list of {scalar.__name__}, got {value!r}")
            value = [_scalar(v, scalar, name) for v in value]
        else:
            value = _scalar(value, scalar, name)
        for rule, args in self.validation.items():
            _validate(name, rule, list(args), value)
        return value

    def rules(self) -> str:
        """The validation in words, for descriptions and docs ("" when none)."""
        return "; ".join(_describe(rule, list(args)) for rule, args in self.validation.items())


def _scalar(value: Any, kind: type, name: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}")
    if kind is float and math.isnan(value):
        raise ValueError(f"{name}: NaN is not a value")
    return value


def _validate(name: str, rule: str, args: list, value: Any) -> None:
    bad = {
        "bounds<>": lambda: not args[0] <= value <= args[1],
        "gt<>": lambda: not value > args[0],
        "gt_eq<>": lambda: not value >= args[0],
        "lt<>": lambda: not value < args[0],
        "lt_eq<>": lambda: not value <= args[0],
        "one_of<>": lambda: value not in args[0],
        "not_empty<>": lambda: len(value) == 0,
        "fixed_size<>": lambda: len(value) != args[0],
        "size_lt<>": lambda: not len(value) < args[0],
        "element_bounds<>": lambda: any(not args[0] <= v <= args[1] for v in value),
        "subset_of<>": lambda: any(v not in args[0] for v in value),
        "unique<>": lambda: len(set(value)) != len(value),
    }[rule]()
    if bad:
        raise ValueError(f"{name}: {value!r} breaks the rule: {_describe(rule, args)}")


def _describe(rule: str, args: list) -> str:
    return {
        "bounds<>": lambda: f"in [{args[0]}, {args[1]}]",
        "gt<>": lambda: f"> {args[0]}",
        "gt_eq<>": lambda: f">= {args[0]}",
        "lt<>": lambda: f"< {args[0]}",
        "lt_eq<>": lambda: f"<= {args[0]}",
        "one_of<>": lambda: "one of " + ", ".join(repr(a) for a in args[0]),
        "not_empty<>": lambda: "not empty",
        "fixed_size<>": lambda: f"exactly {args[0]} values",
        "size_lt<>": lambda: f"fewer than {args[0]} values",
        "element_bounds<>": lambda: f"each value in [{args[0]}, {args[1]}]",
        "subset_of<>": lambda: "each value one of " + ", ".join(repr(a) for a in args[0]),
        "unique<>": lambda: "no value twice",
    }[rule]()


class ParameterSpec:
    """A node's declared parameters (``config/parameters/<node>.yaml``), in file order."""

    def __init__(self, node: str, parameters: list[Parameter], summary: str = "") -> None:
        self.node, self.summary = node, summary
        self.parameters = {p.name: p for p in parameters}

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ParameterSpec:
        """Read a spec file (generate_parameter_library's schema: one node, nested groups)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ValueError(f"{path}: a parameter spec holds exactly one node")
        (node, tree), = data.items()
        summary = tree.pop("__description", "") if isinstance(tree, dict) else ""
        try:
            return cls(node, list(_leaves(tree, "")), summary)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self.parameters.values())

    def __contains__(self, name: str) -> bool:
        return name in self.parameters

    def __getitem__(self, name: str) -> Parameter:
        return self.parameters[name]

    @property
    def defaults(self) -> dict[str, Any]:
        """Dotted name -> default value (a fresh copy each time)."""
        return {p.name: (list(p.default) if isinstance(p.default, list) else p.default)
                for p in self}

    def check(self, name: str, value: Any) -> Any:
        """One value checked against its parameter (ValueError names an unknown one)."""
        if name not in self.parameters:
            raise ValueError(f"{name}: {self.node} has no such parameter; known: "
                             f"{sorted(self.parameters)}")
        return self.parameters[name].check(value)

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every value checked (the first bad one raises ValueError naming it)."""
        return {name: self.check(name, value) for name, value in values.items()}

    def markdown(self) -> str:
        """This node's parameters as a Markdown table (docs/parameters.md)."""
        lines = [f"## {self.node}", "", *([self.summary, ""] if self.summary else []),
                 "| parameter | type | default | description |", "|---|---|---|---|"]
        for p in self:
            default = f"`{p.default!r}`" if p.default != "" else '`""`'
            notes = [p.description.replace("|", "\\|").replace("\n", " ")]
            if p.rules():
                notes.append(f"({p.rules()})")
            if p.read_only:
                notes.append("(read-only)")
            lines.append(f"| `{p.name}` | {p.type} | {default} | {' '.join(notes)} |")
        return "\n".join(lines) + "\n"


def _leaves(tree: Mapping[str, Any], prefix: str) -> Iterator[Parameter]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not isinstance(value, Mapping):
            raise ValueError(f"{name}: expected a parameter (type, default_value, ...) or group")
        if "type" in value:
            extra = sorted(set(value) - {"type", "default_value", "description", "read_only",
                                         "validation"})
            if extra:
                raise ValueError(f"{name}: unknown keys {extra}")
            yield Parameter(name, value["type"], value["default_value"],
                            str(value.get("description", "")).strip(),
                            bool(value.get("read_only", False)),
                            dict(value.get("validation") or {}))
        else:
            yield from _leaves(value, f"{name}.")


def spec_path(node: str) -> Path:
    """Where ``node``'s spec lives (the package's config/parameters/)."""
    from roboalign_ros.robot import package_path

    return package_path(*SPEC_DIR, f"{node}.yaml")


@functools.cache
def load_spec(node: str) -> ParameterSpec:
    """``node``'s spec (``config/parameters/<node>.yaml``), read once per process."""
    path = spec_path(node)
    if not path.is_file():
        raise ValueError(f"parameter spec: {path} not found (node {node!r})")
    return ParameterSpec.from_yaml(path)


def default(node: str, name: str) -> Any:
    """The default of ``node``'s parameter ``name``, written once: in its spec.

    For the core classes a node builds from its parameters (``TeleopConfig`` ...).
    """
    return load_spec(node)[name].default


def specs() -> list[ParameterSpec]:
    """Every node's spec, by node name."""
    from roboalign_ros.robot import package_path

    return [load_spec(p.stem) for p in sorted(package_path(*SPEC_DIR).glob("*.yaml"))]


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested groups -> dotted names (``{"safety": {"margin": 1}}`` -> ``safety.margin``)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
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
    if not isinstance(block, Mapping) or not isinstance(block.get("ros__parameters", {}),
                                                         Mapping):
        raise ValueError(f"parameter file {path}: no `{node}: ros__parameters:` mapping")
    return flatten(block.get("ros__parameters") or {})


def node_parameters(spec: ParameterSpec | str, file: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    node: str | None = None) -> dict[str, Any]:
    """What the node would see: its spec's defaults, then ``file``, then ``overrides``.

    Each value is checked against the spec: an unknown name or a bad value raises ValueError
    naming it (an integer given for a double is taken as a float).
    """
    spec = load_spec(spec) if isinstance(spec, str) else spec
    values = spec.defaults
    for source, given in (("file", load_parameters(file, node) if file else {}),
                          ("overrides", overrides or {})):
        for name, value in given.items():
            try:
                values[name] = spec.check(name, value)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
    return values


def main() -> None:
    """Print docs/parameters.md: every node's parameters, from the specs."""
    print("# Node parameters\n\nGenerated from `config/parameters/<node>.yaml` by "
          "`python -m roboalign_ros.parameters > docs/parameters.md`; do not edit by hand. A "
          "node's file in `config/` sets only what differs from these defaults.\n")
    print("\n".join(spec.markdown() for spec in specs()), end="")


if __name__ == "__main__":
    main()
