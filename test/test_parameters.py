"""Every node parameter is declared once: its spec (config/parameters/<node>.yaml) holds its type,
default, rule and description; config/*.yaml files set only what differs and only what is
declared; no module writes a node's defaults again; docs/parameters.md is generated from the
specs. And the spec's rules are enforced, by the ROS-free loader and by the nodes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from roboalign_ros.parameters import (
    Parameter,
    ParameterSpec,
    flatten,
    load_spec,
    node_parameters,
    specs,
)

ROOT = Path(__file__).resolve().parents[1]
# the nodes' parameter files whose block is not named after the node
FILE_NODES = {"recorder.yaml": "recorder_node"}
# the classes and functions a node builds from its parameters (ROS-free core), and the names
# their fields or arguments have there when not the parameter's own (None: not that parameter):
# their defaults, when they have any, come from the spec (``parameters.default``)
BUILT_FROM = {
    ("roboalign_ros/teleop.py", "TeleopConfig"): ("teleop_node", {}),
    ("roboalign_ros/control/executor.py", "ExecutorConfig"): (
        "executor_node", {"rate_hz": "rate", "rtc_blend_s": "rtc_blend", "max_age":
                          "max_chunk_age"}),
    ("roboalign_ros/control/safety.py", "SafetyLimits"): (
        "executor_node", {n: f"safety.{n}" for n in ("velocity_scale", "max_step", "acc_max",
                                                   "margin", "workspace_mode")}),
    ("roboalign_ros/recording/session.py", "SessionConfig"): (
        "recorder_node", {"codec": "video.codec", "crf": "video.crf", "gop": "video.gop",
                          "encoder_threads": "video.threads",
                          "stream_workers": "video.stream_workers",
                          "encoder_nice": "video.nice", "spool_max_gb": "spool.max_gb",
                          "recover_partial": "spool.recover_partial"}),
    ("roboalign_ros/evaluation/session.py", "SessionConfig"): ("eval_node", {}),
    ("roboalign_ros/camera/realsense.py", "CameraSettings"): ("camera_node", {}),
    ("roboalign_ros/serving/gate.py", "GateLimits"): ("policy_node", {}),
    ("roboalign_ros/serving/gate.py", "InputLimits"): ("policy_node", {}),
    # the headless evaluator runs a worker per core: its own device and thread defaults
    ("roboalign_ros/evaluation/headless.py", "SimEvalConfig"): (
        "policy_node", {"device": None, "torch_threads": None}),
}


def node_files() -> list[tuple[Path, str, str]]:
    """(file, block, node) of every node block in config/*.yaml."""
    nodes = {s.node for s in specs()}
    out = []
    for path in sorted((ROOT / "config").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for block, body in doc.items():
            node = FILE_NODES.get(path.name) if block == "/**" else block
            if isinstance(body, dict) and "ros__parameters" in body and node in nodes:
                out.append((path, block, node))
    return out


def test_every_node_has_a_spec_with_descriptions_and_valid_defaults() -> None:
    nodes = {s.node for s in specs()}
    assert {"camera_node", "eval_node", "executor_node", "policy_node", "recorder_node",
            "sim_node", "teleop_node"} <= nodes
    for spec in specs():
        assert spec.parameters, spec.node
        for p in spec:
            assert p.description.strip(), f"{spec.node}.{p.name}"
            assert p.check(p.default) == p.default


def test_parameter_files_set_only_declared_parameters_with_valid_values_that_differ() -> None:
    files = node_files()
    assert {node for _, _, node in files} >= {"camera_node", "eval_node", "executor_node",
                                             "policy_node", "recorder_node", "sim_node",
                                             "teleop_node"}
    for path, block, node in files:
        spec = load_spec(node)
        values = flatten((yaml.safe_load(path.read_text())[block]["ros__parameters"]) or {})
        for name, value in values.items():
            where = f"{path.name}: {name}"
            assert name in spec, f"{where} is not declared in config/parameters/{node}.yaml"
            assert spec.check(name, value) == value or isinstance(value, int), where
            assert spec[name].default != value, \
                f"{where}: {value!r} is the default (config/parameters/{node}.yaml): written twice"


def literal_defaults(tree: ast.AST, owner: str) -> dict[str, tuple[object, int]]:
    """Field or argument name -> (literal default, line) in class or function ``owner``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == owner:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                        and isinstance(item.value, ast.Constant) and item.value.value is not None:
                    out[item.target.id] = (item.value.value, item.lineno)
        if isinstance(node, ast.FunctionDef) and node.name == owner:
            args = node.args.args[len(node.args.args) - len(node.args.defaults):]
            for arg, default in [*zip(args, node.args.defaults),
                                 *zip(node.args.kwonlyargs, node.args.kw_defaults)]:
                if isinstance(default, ast.Constant) and default.value is not None:
                    out[arg.arg] = (default.value, node.lineno)
    return out


def test_no_node_parameter_default_is_written_twice() -> None:
    names = {s.node: set(s.parameters) for s in specs()}
    problems = []
    # 1. no dict of a node's defaults anywhere in the package (the nodes had one each)
    for path in sorted((ROOT / "roboalign_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                for spec_node, declared in names.items():
                    if len(keys & declared) >= 3 and all(
                            isinstance(v, ast.Constant) for v in node.values):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: a dict of "
                                        f"{spec_node}'s parameters with literal values")
    # 2. the core classes built from a node's parameters take their defaults from the spec
    for (file, owner), (spec_node, renamed) in BUILT_FROM.items():
        spec = load_spec(spec_node)
        found = literal_defaults(ast.parse((ROOT / file).read_text()), owner)
        for field, (value, line) in found.items():
            name = renamed.get(field, field)
            if name in spec:
                problems.append(f"{file}:{line}: {owner}.{field} = {value!r} writes "
                                f"{spec_node}.{name}'s default again (use parameters.default)")
    assert not problems, "\n".join(problems)


def test_the_core_classes_defaults_are_the_specs() -> None:
    import dataclasses
    import importlib

    for (file, owner), (spec_node, renamed) in BUILT_FROM.items():
        module = importlib.import_module(file[:-3].replace("/", "."))
        spec = load_spec(spec_node)
        for field in dataclasses.fields(getattr(module, owner)):
            name = renamed.get(field.name, field.name)
            if name in spec and field.default not in (dataclasses.MISSING, None):
                value = list(field.default) if isinstance(field.default, tuple) \
                    else field.default
                assert value == spec[name].default, f"{owner}.{field.name}"


def test_docs_are_generated_from_the_specs() -> None:
    out = subprocess.run([sys.executable, "-m", "roboalign_ros.parameters"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    docs = (ROOT / "docs" / "parameters.md").read_text()
    assert out == docs, "docs/parameters.md is stale: python -m roboalign_ros.parameters > " \
                        "docs/parameters.md"
    for spec in specs():
        for p in spec:
            assert f"`{p.name}`" in docs


@pytest.mark.parametrize("name, value, message", [
    ("rate", -5.0, r"rate: -5.0 breaks the rule: in \[1.0, 1000.0\]"),
    ("blend", "average", "blend: 'average' breaks the rule: one of 'latest'"),
    ("safety.velocity_scale", "fast", "safety.velocity_scale: expected float"),
    ("safety.workspace", 1, "safety.workspace: expected bool"),
    ("no_such", 1, "no_such: executor_node has no such parameter"),
])
def test_a_bad_value_is_refused_naming_the_parameter_and_its_rule(name, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        node_parameters("executor_node", None, {name: value})
    assert node_parameters("executor_node", None, {"rate": 50})["rate"] == 50.0  # int: a double


def test_a_malformed_spec_is_refused_by_name(tmp_path: Path) -> None:
    cases = {
        "no description": {"n": {"a": {"type": "int", "default_value": 1}}},
        "bad default": {"n": {"a": {"type": "int", "default_value": "x", "description": "d"}}},
        "unknown validator": {"n": {"a": {"type": "int", "default_value": 1, "description": "d",
                                          "validation": {"positive<>": []}}}},
        "default breaks rule": {"n": {"a": {"type": "double", "default_value": -1.0,
                                            "description": "d",
                                            "validation": {"gt<>": [0.0]}}}},
    }
    for what, doc in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ValueError, match=r"\ba\b"):
            ParameterSpec.from_yaml(path)
    spec = ParameterSpec("n", [Parameter("xs", "string_array", [], "names",
                                         validation={"unique<>": []})])
    with pytest.raises(ValueError, match="no value twice"):
        spec.check("xs", ["a", "a"])
