"""Training on two processes (``accelerate launch``, DDP over gloo on CPU), against one.

At the same global batch and seed (per-process batch halved), ``sft`` and ``head`` give the
one-process loss curve within ``RTOL``: the two processes see the same samples with the same
noise (accelerate's batch sharding; the head's ``[rank::N]`` share of the global batch and of
its noise) and the learning rate depends on the optimizer step alone. What differs is the
float summation order (two half-batch gradients all-reduced instead of one batch sum; each
half padded to its own longest sequence), ~1e-7 relative per step, which Adam carries on.
Only rank 0 writes checkpoints and logs (each rank writes its own random state), and a run
resumes from a checkpoint the two processes wrote.

``align`` (TRL's GRPO) samples completions from each process's random stream, so its curve is
not the one-process curve step for step: the test checks its mean reward, the checkpoint and
the resume. Minutes on 2 cores: ``make test-slow``.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from roboalign_ros.training import run_align, run_head, run_sft

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "config" / "accelerate" / "multi_cpu.yaml"
POLICY = {"horizon": 4, "image_size": [56, 56], "head_width": 32, "head_layers": 1,
          "head_heads": 2, "action_vocab_size": 64, "attn_implementation": "sdpa",
          "policy_overrides": {"max_new_tokens": 24}}
RTOL = 1e-5  # observed: 1.2e-7 (sft), 1.2e-7 (head) relative, over 4-6 steps


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Synthetic dataset, tiny backbone, and an SFT policy that knows two prompts (for GRPO)."""
    from roboalign_ros.data.synthetic import write_synthetic_dataset
    from roboalign_ros.model.tiny import build_random_backbone

    root = tmp_path_factory.mktemp("processes")
    write_synthetic_dataset(root / "ds", episodes=3, frames=20, cameras={"scene": (48, 64)}).close()
    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(root / "backbone")
    processor.save_pretrained(root / "backbone")
    run_sft(_config(root / "sft_known", data={"roots": [str(root / "ds")], "max_samples": 2},
                    policy={"backbone": str(root / "backbone"), **POLICY}, reasoning="none",
                    learning_rate=3e-3, lr_scheduler="constant", warmup_ratio=0.0,
                    batch_size=2, max_steps=80))
    return root


def _config(out, **kw):
    return {"run": {"output_dir": str(out), "progress": False, "keep_checkpoints": 0}, **kw}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(stage: str, config: dict, tmp: Path) -> str:
    """``accelerate launch`` the stage on 2 CPU processes; returns its stdout."""
    path = tmp / f"{Path(config['run']['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE),
           "--main_process_port", str(_free_port()), "-m", f"roboalign_ros.training.{stage}",
           "--config", str(path)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def _history(out: Path, stage: str) -> list[dict]:
    return json.loads((out / f"{stage}_history.json").read_text())


def _written_once(out: Path, stdout: str) -> None:
    """Rank 0 alone wrote the logs (one TensorBoard file, one result line)."""
    assert len(list((out / "tb").rglob("events.out.tfevents.*"))) == 1
    assert stdout.count(str(out / "policy")) == 1


def test_sft_two_processes_match_one_and_resume(work, tmp_path):
    base = dict(data={"roots": [str(work / "ds")], "max_samples": 8},
                policy={"backbone": str(work / "backbone"), **POLICY}, reasoning="none",
                learning_rate=1e-3, warmup_ratio=0.25, max_steps=4)
    run_sft(_config(tmp_path / "one", batch_size=4, **base))
    two = _config(tmp_path / "two", batch_size=2, **base)
    two["run"]["save_every"] = 2
    stdout = launch("sft", two, tmp_path)
    one_rows, two_rows = _history(tmp_path / "one", "sft"), _history(tmp_path / "two", "sft")
    assert [r["step"] for r in two_rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in two_rows], [r["loss"] for r in one_rows],
                               rtol=RTOL)
    assert [r["lr"] for r in two_rows] == [r["lr"] for r in one_rows]
    _written_once(tmp_path / "two", stdout)
    state = tmp_path / "two" / "checkpoint-2" / "trainer_state"
    assert sorted(p.name for p in state.glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]  # the only per-rank files

    # resume: the checkpoint the two processes wrote at step 2, in a fresh output directory
    shutil.copytree(tmp_path / "two" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    launch("sft", {**two, "run": {**two["run"], "output_dir": str(tmp_path / "resumed")}},
           tmp_path)
    resumed = _history(tmp_path / "resumed", "sft")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in two_rows],
                               rtol=1e-6)
    a = load_file(tmp_path / "two" / "policy" / "backbone" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "policy" / "backbone" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_head_two_processes_match_one(work, tmp_path):
    base = dict(data={"roots": [str(work / "ds")], "val_fraction": 0.34},
                policy={"checkpoint": str(work / "sft_known" / "policy")}, context="none",
                reinit_head=True, learning_rate=3e-3, warmup_ratio=0.2, max_steps=6,
                eval_every=3, eval_num_steps=2)
    run_head(_config(tmp_path / "one", batch_size=8, **base))
    stdout = launch("head", _config(tmp_path / "two", batch_size=4, **base), tmp_path)
    one_rows, two_rows = _history(tmp_path / "one", "head"), _history(tmp_path / "two", "head")
    np.testing.assert_allclose([r["loss"] for r in two_rows], [r["loss"] for r in one_rows],
                               rtol=RTOL)
    assert [r["lr"] for r in two_rows] == [r["lr"] for r in one_rows]
    np.testing.assert_allclose([r["val_mse"] for r in two_rows if "val_mse" in r],
                               [r["val_mse"] for r in one_rows if "val_mse" in r], rtol=RTOL)
    _written_once(tmp_path / "two", stdout)


def test_align_runs_on_two_processes_and_resumes(work, tmp_path):
    from roboalign_ros.model import VLAPolicy
    from roboalign_ros.training.align import reward_curve

    base = dict(data={"roots": [str(work / "ds")], "max_samples": 2},
                policy={"checkpoint": str(work / "sft_known" / "policy")}, group_size=8,
                learning_rate=3e-4, beta=0.0, max_steps=8, max_completion_length=28)
    # the same global batch: 2 prompts x 8 completions a step
    run_align(_config(tmp_path / "one", prompts_per_step=2, **base))
    two = _config(tmp_path / "two", prompts_per_step=1, **base)
    two["run"]["save_every"] = 4
    stdout = launch("align", two, tmp_path)
    one_r = reward_curve(_history(tmp_path / "one", "align"))
    two_r = reward_curve(_history(tmp_path / "two", "align"))
    assert len(two_r) == 8
    assert abs(np.mean(two_r) - np.mean(one_r)) < 0.15, (one_r, two_r)
    _written_once(tmp_path / "two", stdout)
    ckpt = tmp_path / "two" / "checkpoint-4"
    assert (ckpt / "COMPLETE").is_file()
    assert sorted(p.name for p in ckpt.glob("rng_state*")) == ["rng_state_0.pth",
                                                               "rng_state_1.pth"]
    VLAPolicy.from_pretrained(ckpt, device="cpu")

    shutil.copytree(ckpt, tmp_path / "resumed" / "checkpoint-4")
    launch("align", {**two, "run": {**two["run"], "output_dir": str(tmp_path / "resumed")}},
           tmp_path)
    history = _history(tmp_path / "resumed", "align")
    steps = [h["step"] for h in history if "reward" in h]
    assert steps == list(range(1, 9))  # 1-4 from the checkpoint, 5-8 trained after it
    assert reward_curve(history)[:4] == two_r[:4]
