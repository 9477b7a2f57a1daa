"""Training throughput per stage on CPU with the tiny model (samples/s, median step time).

python scripts/bench_training.py [--steps 20] [--out bench.json]

Builds a synthetic dataset (3 episodes x 20 frames, one 48x64 camera) and a tiny random
Qwen2.5-VL backbone in a temp dir, then times: rationale (scripted teacher and the tiny HF
model as teacher, frames/s), sft (samples/s), align (GRPO completions/s), head (feature
extraction samples/s and training samples/s).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

GOOD = ("<Observation> a cube. <Situation Analysis> not grasped. <Spatial Reasoning> cube "
        "right of gripper. <Task Planning> 1. move right 2. grasp")


class Scripted:
    name = "scripted"

    def generate(self, images, prompt, seed=0):
        return GOOD


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import torch

    from roboalign_ros.data.synthetic import write_synthetic_dataset
    from roboalign_ros.model.tiny import build_random_backbone
    from roboalign_ros.training import run_align, run_head, run_rationale, run_sft

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    write_synthetic_dataset(tmp / "ds", episodes=3, frames=20, cameras={"scene": (48, 64)}).close()
    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(tmp / "bb")
    processor.save_pretrained(tmp / "bb")
    pol = {"backbone": str(tmp / "bb"), "horizon": 4, "image_size": [56, 56], "head_width": 32,
           "head_layers": 1, "head_heads": 2, "action_vocab_size": 64,
           "attn_implementation": "sdpa", "policy_overrides": {"max_new_tokens": 24}}
    data = {"roots": [str(tmp / "ds")]}
    res = {}

    def run(name, **kw):
        return {"run": {"output_dir": str(tmp / name), "progress": False}, **kw}

    # rationale
    import shutil

    shutil.copytree(tmp / "ds", tmp / "ds2")  # a copy without rationales for the HF teacher
    t = time.perf_counter()
    c = run_rationale(run("rat", data=data, frames_per_episode=4), teacher=Scripted())
    res["rationale_scripted_frames_per_s"] = c["accepted"] / (time.perf_counter() - t)
    t = time.perf_counter()
    c = run_rationale(run("rat2", data={"roots": [str(tmp / "ds2")]}, frames_per_episode=2,
                          max_attempts=1,
                          teacher={"path": str(tmp / "bb"), "device": "cpu", "dtype": "float32",
                                   "max_new_tokens": 32, "image_size": [56, 56]}))
    res["rationale_tiny_hf_attempts_per_s"] = c["attempts"] / (time.perf_counter() - t)

    # sft
    bs = 4
    t = time.perf_counter()
    final = run_sft(run("sft", data=data, policy=pol, reasoning="latest", batch_size=bs,
                        max_steps=a.steps, learning_rate=1e-3))
    wall = time.perf_counter() - t
    hist = json.loads((tmp / "sft" / "sft_history.json").read_text())
    med = statistics.median(h["step_time"] for h in hist[1:])
    res["sft_samples_per_s"] = bs / med
    res["sft_median_step_s"] = med
    res["sft_wall_s"] = wall

    # align
    g, steps = 4, max(4, a.steps // 2)
    t = time.perf_counter()
    aligned = run_align(run("align", data={**data, "max_samples": 4},
                            policy={"checkpoint": str(final)},
                            group_size=g, max_steps=steps, max_completion_length=24,
                            learning_rate=1e-5, beta=0.04))
    wall = time.perf_counter() - t
    hist = json.loads((tmp / "align" / "align_history.json").read_text())
    st = [h["step_time"] for h in hist if "step_time" in h]
    med = statistics.median(st[1:] if len(st) > 1 else st)
    res["align_completions_per_s"] = g / med
    res["align_median_step_s"] = med
    res["align_wall_s"] = wall

    # head
    t = time.perf_counter()
    run_head(run("head", data={**data, "val_fraction": 0.34}, policy={"checkpoint": str(aligned)},
                 context="none", batch_size=16, max_steps=a.steps * 5, eval_num_steps=4))
    wall = time.perf_counter() - t
    hist = json.loads((tmp / "head" / "head_history.json").read_text())
    med = statistics.median(h["step_time"] for h in hist[1:])
    res["head_train_samples_per_s"] = 16 / med
    res["head_wall_s"] = wall
    from roboalign_ros.model import VLAPolicy
    from roboalign_ros.training.head import extract_features
    from roboalign_ros.training.samples import FrameSamples, open_datasets

    p = VLAPolicy.from_pretrained(aligned, device="cpu")
    readers = open_datasets(data["roots"])
    fs = FrameSamples(readers, data["roots"], 4, ["scene"], 7, [[0, 1, 2]], 1, 0, "none")
    t = time.perf_counter()
    extract_features(p, fs, "none", 8, None, False)
    res["head_feature_extraction_samples_per_s"] = len(fs) / (time.perf_counter() - t)
    t = time.perf_counter()
    fs.items = fs.items[:8]
    extract_features(p, fs, "generated", 8, None, False)
    res["head_feature_extraction_generated_samples_per_s"] = 8 / (time.perf_counter() - t)

    res = {k: round(v, 3) for k, v in res.items()}
    res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
