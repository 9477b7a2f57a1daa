"""Training throughput on 1 and 2 processes (DDP over gloo on this machine's CPUs).

python scripts/bench_training_processes.py [--steps 20] [--batch 8] [--stages sft,head,align]
    [--preset tiny] [--out bench.json]

Builds a synthetic dataset (3 episodes x 20 frames, one 48x64 camera) and a random backbone
(``--preset``: tiny or mini) in a temp dir, then runs each stage as a user would: one process
(``python -m roboalign_ros.training.<stage>``) with one thread and with one per CPU, and two
(``accelerate launch --config_file config/accelerate/multi_cpu.yaml``, one thread each, as
torchrun sets), at the same global batch (``--batch``; each of two processes takes half) and,
for sft and head, also at the same per-process batch (the global batch doubles). Prints
samples/s (align: completions/s) from the median step time of the stage's history after the
first two steps, and the load average (other work on the machine slows every figure).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "config" / "accelerate" / "multi_cpu.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(stage: str, config: dict, processes: int, tmp: Path, threads: int = 1) -> list[dict]:
    """Run ``stage`` on ``processes`` processes (``threads`` each); returns its history."""
    out = Path(config["run"]["output_dir"])
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    module = ["-m", f"roboalign_ros.training.{stage}", "--config", str(path)]
    if processes == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ACCELERATE), "--num_processes", str(processes), "--main_process_port",
               str(free_port()), *module]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{stage} on {processes} processes failed:\n{done.stderr[-3000:]}")
    return json.loads((out / f"{stage}_history.json").read_text())


def rate(history: list[dict], per_step: int) -> float:
    times = [h["step_time"] for h in history if "step_time" in h][2:]
    return per_step / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="global batch (even)")
    ap.add_argument("--stages", default="sft,head")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "mini"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import torch

    from roboalign_ros.data.synthetic import write_synthetic_dataset
    from roboalign_ros.model.tiny import build_random_backbone

    tmp = Path(tempfile.mkdtemp(prefix="bench_processes_"))
    write_synthetic_dataset(tmp / "ds", episodes=3, frames=20, cameras={"scene": (48, 64)}).close()
    model, processor = build_random_backbone(a.preset, image_size=(56, 56))
    model.save_pretrained(tmp / "bb")
    processor.save_pretrained(tmp / "bb")
    policy = {"backbone": str(tmp / "bb"), "horizon": 4, "image_size": [56, 56],
              "head_width": 32, "head_layers": 1, "head_heads": 2, "action_vocab_size": 64,
              "attn_implementation": "sdpa", "policy_overrides": {"max_new_tokens": 24}}
    data = {"roots": [str(tmp / "ds")]}
    stages = a.stages.split(",")
    cpus = os.cpu_count()
    res = {"preset": a.preset, "global_batch": a.batch, "steps": a.steps, "cpus": cpus,
           "torch": torch.__version__, "load_average_before": os.getloadavg()[0]}

    def config(name, **kw):
        return {"run": {"output_dir": str(tmp / name), "progress": False}, **kw}

    sft = dict(data=data, policy=policy, reasoning="none", learning_rate=1e-3,
               max_steps=a.steps)
    # sft always runs once: its policy is where head and align start
    hist = run("sft", config("sft1", batch_size=a.batch, **sft), 1, tmp)
    start = str(tmp / "sft1" / "policy")
    if "sft" in stages:
        res["sft_samples_per_s_1proc_1thread"] = rate(hist, a.batch)
        hist = run("sft", config("sft1t", batch_size=a.batch, **sft), 1, tmp, cpus)
        res[f"sft_samples_per_s_1proc_{cpus}threads"] = rate(hist, a.batch)
        hist = run("sft", config("sft2", batch_size=a.batch // 2, **sft), 2, tmp)
        res["sft_samples_per_s_2proc_same_global_batch"] = rate(hist, a.batch)
        hist = run("sft", config("sft2w", batch_size=a.batch, **sft), 2, tmp)
        res["sft_samples_per_s_2proc_same_batch_per_process"] = rate(hist, 2 * a.batch)
    if "head" in stages:
        head = dict(data={**data, "val_fraction": 0.34}, policy={"checkpoint": start},
                    context="none", max_steps=a.steps * 5, eval_num_steps=2)
        res["head_samples_per_s_1proc_1thread"] = rate(
            run("head", config("head1", batch_size=a.batch, **head), 1, tmp), a.batch)
        res[f"head_samples_per_s_1proc_{cpus}threads"] = rate(
            run("head", config("head1t", batch_size=a.batch, **head), 1, tmp, cpus), a.batch)
        res["head_samples_per_s_2proc_same_global_batch"] = rate(
            run("head", config("head2", batch_size=a.batch // 2, **head), 2, tmp), a.batch)
        res["head_samples_per_s_2proc_same_batch_per_process"] = rate(
            run("head", config("head2w", batch_size=a.batch, **head), 2, tmp), 2 * a.batch)
    if "align" in stages:
        g = 4
        align = dict(data={**data, "max_samples": 4}, policy={"checkpoint": start},
                     group_size=g, max_steps=max(4, a.steps // 2), max_completion_length=24,
                     learning_rate=1e-5)
        hist = run("align", config("align1", prompts_per_step=2, **align), 1, tmp)
        res["align_completions_per_s_1proc_1thread"] = rate(hist, 2 * g)
        hist = run("align", config("align1t", prompts_per_step=2, **align), 1, tmp, cpus)
        res[f"align_completions_per_s_1proc_{cpus}threads"] = rate(hist, 2 * g)
        hist = run("align", config("align2", prompts_per_step=1, **align), 2, tmp)
        res["align_completions_per_s_2proc_same_global_batch"] = rate(hist, 2 * g)
    res["load_average_after"] = os.getloadavg()[0]
    res = {k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
