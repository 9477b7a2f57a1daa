"""The shared training loop (training/loop.py) trains as the stages' own loops did before it.

The reference losses were recorded with the three stage loops of commit 70b9a67 (before the
shared loop), on the tiny configs below, one torch thread. After the refactor the same seeds
gave the same losses bit for bit, and the same final weights (the comparison of issue 24).
Only ``sft`` with gradient accumulation logs differently: a step's row is now the mean over its
micro-batches (it was the last micro-batch's), so its reference is the new one.

If the tiny backbone, the synthetic dataset or the model code change on purpose, these numbers
move and must be recorded again; a change of the loop alone must not move them.
"""

import json
from pathlib import Path

import pytest
import torch

from roboalign_ros.training import run_ground, run_head, run_sft

POLICY = {"horizon": 4, "image_size": [56, 56], "head_width": 32, "head_layers": 1,
          "head_heads": 2, "action_vocab_size": 64, "attn_implementation": "sdpa",
          "policy_overrides": {"max_new_tokens": 24}}
SIM_DEMOS = str(Path(__file__).resolve().parents[1] / "datasets" / "sim_expert")
RTOL = 1e-4  # float differences between CPUs; a wrong step, rate or batch moves them by > 1e-3

SFT = [8.300636291503906, 8.305739402770996, 8.080700874328613, 7.9429240226745605]
SFT_ACCUMULATED = [8.302764892578125, 8.057729721069336, 7.86669659614563, 7.834347248077393]
HEAD = [1.5479997396469116, 1.7019397020339966, 1.7598634958267212, 1.5031487941741943,
        1.6019246578216553]
HEAD_VAL_MSE = {2: 1.78666261945452, 4: 1.834963389805385, 5: 1.840999902997698}
GROUND = [3.9695239067077637, 4.108363628387451, 3.906172275543213]
GROUND_HELD_OUT = {2: 0.08713404834270477, 3: 0.08667236566543579}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the references were recorded with one thread
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from roboalign_ros.data.synthetic import write_synthetic_dataset
    from roboalign_ros.model.tiny import build_random_backbone

    root = tmp_path_factory.mktemp("loop")
    write_synthetic_dataset(root / "ds", episodes=3, frames=20, cameras={"scene": (48, 64)}).close()
    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(root / "backbone")
    processor.save_pretrained(root / "backbone")
    return root


def _config(work, name, **kw):
    return {"run": {"output_dir": str(work / name), "progress": False}, **kw}


def _history(work, name, stage):
    return json.loads((work / name / f"{stage}_history.json").read_text())


def _sft(work, name, samples, **kw):
    return run_sft(_config(work, name, data={"roots": [str(work / "ds")], "max_samples": samples},
                           policy={"backbone": str(work / "backbone"), **POLICY},
                           reasoning="none", learning_rate=1e-3, batch_size=2, **kw))


def test_sft_losses_as_before(work):
    _sft(work, "sft", 8, max_steps=4, warmup_ratio=0.25)
    rows = _history(work, "sft", "sft")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx(SFT, rel=RTOL)
    # 6 samples, 3 batches an epoch, 2 per step: the epoch's last step has one batch
    _sft(work, "sft_ga", 6, gradient_accumulation_steps=2, epochs=2.0)
    rows = _history(work, "sft_ga", "sft")
    assert [r["loss"] for r in rows] == pytest.approx(SFT_ACCUMULATED, rel=RTOL)
    assert rows[-1]["lr"] == 0.0  # the cosine schedule ends with the last step


def test_head_losses_and_evaluations_as_before(work):
    if not (work / "sft" / "policy").is_dir():
        _sft(work, "sft", 8, max_steps=4, warmup_ratio=0.25)
    run_head(_config(work, "head", data={"roots": [str(work / "ds")], "val_fraction": 0.34},
                     policy={"checkpoint": str(work / "sft" / "policy")}, context="none",
                     reinit_head=True, learning_rate=3e-3, warmup_ratio=0.0, batch_size=8,
                     max_steps=5, eval_every=2, eval_num_steps=2))
    rows = _history(work, "head", "head")
    assert [r["loss"] for r in rows] == pytest.approx(HEAD, rel=RTOL)
    val = {r["step"]: r["val_mse"] for r in rows if "val_mse" in r}
    assert val == pytest.approx(HEAD_VAL_MSE, rel=RTOL)  # every 2 steps and the last
    metrics = json.loads((work / "head" / "head_metrics.json").read_text())
    assert metrics["mse"] == pytest.approx(HEAD_VAL_MSE[5], rel=RTOL)


def test_ground_losses_as_before(work):
    run_ground(_config(work, "ground", data={"roots": [SIM_DEMOS]},
                       policy={"backbone": str(work / "backbone"), **POLICY}, steps=3,
                       batch_size=4, eval_scenes=4, eval_every=2, keypoints=6))
    rows = _history(work, "ground", "ground")
    assert [r["loss"] for r in rows] == pytest.approx(GROUND, rel=RTOL)
    held = {r["step"]: r["held_out_error_m"] for r in rows if "held_out_error_m" in r}
    assert held == pytest.approx(GROUND_HELD_OUT, rel=RTOL)
