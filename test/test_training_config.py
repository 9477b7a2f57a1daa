"""Stage configs: YAML + overrides, unknown keys / bad values name the field, shipped files load."""

from pathlib import Path

import pytest

from roboalign_ros.training import (
    AlignConfig,
    HeadStageConfig,
    RationaleConfig,
    SFTConfig,
    load_config,
)
from roboalign_ros.training.config import ConfigError, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
BASE = {"data": {"roots": ["d"]}, "policy": {"backbone": "b"}}


def test_defaults_and_overrides():
    cfg = load_config(SFTConfig, BASE, ["lambda_reasoning=0.5", "run.seed=3",
                                        "lora.enabled=true", "data.roots=[x, y]"])
    assert cfg.lambda_reasoning == 0.5 and cfg.run.seed == 3 and cfg.lora.enabled
    assert cfg.data.roots == ["x", "y"] and cfg.learning_rate == 2e-5
    assert parse_overrides(["a.b=1", "c=hello"]) == {"a": {"b": 1}, "c": "hello"}


@pytest.mark.parametrize("cls,data,field", [
    (SFTConfig, {**BASE, "lamda_reasoning": 0.3}, "unknown option(s) ['lamda_reasoning']"),
    (SFTConfig, {**BASE, "lambda_reasoning": -1}, "sft.lambda_reasoning"),
    (SFTConfig, {**BASE, "batch_size": "eight"}, "sft.batch_size: expected an integer"),
    (SFTConfig, {**BASE, "freeze_vision": "yes"}, "sft.freeze_vision: expected true/false"),
    (SFTConfig, {**BASE, "run": {"outdir": "x"}}, "sft.run: unknown option(s) ['outdir']"),
    (SFTConfig, {"data": {"roots": []}, "policy": {"backbone": "b"}}, "sft.data.roots"),
    (SFTConfig, {"data": {"roots": ["d"]}}, "sft.policy.checkpoint"),
    (SFTConfig, {**BASE, "run": {"mixed_precision": "fp8"}}, "sft.run.mixed_precision"),
    (AlignConfig, {**BASE, "group_size": 1}, "align.group_size"),
    (AlignConfig, {**BASE, "beta": -0.1}, "align.beta"),
    (AlignConfig, {**BASE, "temperature": 0}, "align.temperature"),
    (AlignConfig, {**BASE, "distance_weight": 2}, "align.distance_weight"),
    (HeadStageConfig, BASE, "head.policy.checkpoint"),
    (HeadStageConfig, {"data": {"roots": ["d"]}, "policy": {"checkpoint": "c"},
                       "context": "x"}, "head.context"),
    (RationaleConfig, {"data": {"roots": ["d"]}, "max_attempts": 0}, "rationale.max_attempts"),
])
def test_bad_configs_name_the_field(cls, data, field):
    with pytest.raises(ConfigError) as err:
        load_config(cls, data)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SFTConfig, bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(SFTConfig, BASE, ["lambda_reasoning"])


@pytest.mark.parametrize("name,cls", [("sft", SFTConfig), ("rationale", RationaleConfig),
                                      ("align", AlignConfig), ("head", HeadStageConfig)])
def test_shipped_stage_configs_load(name, cls):
    cfg = load_config(cls, ROOT / "config" / "training" / f"{name}.yaml")
    assert cfg.run.output_dir == f"runs/{name}"


def test_paper_defaults():
    a = load_config(AlignConfig, ROOT / "config" / "training" / "align.yaml")
    assert (a.group_size, a.learning_rate, a.lr_scheduler) == (5, 1e-6, "constant")
    s = load_config(SFTConfig, BASE)
    assert (s.lambda_reasoning, s.learning_rate, s.warmup_ratio, s.freeze_vision) == \
        (0.3, 2e-5, 0.03, True)


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {}
    for f in sorted((ROOT / "config" / "accelerate").glob("*.yaml")):
        c = ClusterConfig.from_yaml_file(str(f))
        kinds[f.stem] = str(c.distributed_type)
    assert {"single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3",
            "multi_node"} <= set(kinds)
    assert "FSDP" in kinds["fsdp"] and "DEEPSPEED" in kinds["deepspeed_zero3"]


def test_main_rejects_bad_config(tmp_path):
    from roboalign_ros.training import sft

    with pytest.raises(ConfigError, match="unknown option"):
        sft.main(["--set", "data.roots=[d]", "--set", "policy.backbone=b", "--set", "nope=1"])


def test_stage_dispatcher_usage():
    from roboalign_ros.training import STAGES, main

    assert list(STAGES) == ["rationale", "ground", "sft", "align", "head"]
    assert main(["nope"]) == 2
    assert main([]) == 2
