"""Policy latency benchmark (plain Python, no ROS): ``python -m roboalign_ros.model.bench``.

Stages, each as p50/p90 over ``--runs`` repetitions after ``--warmup``:

* ``preprocess``: image resize + processor (tokenize, patchify) for the generation prompt;
* ``prefill``: one backbone forward over the prompt (vision tower + all text layers);
* ``generate``: ``--new-tokens`` forced greedy tokens; split into ``time_to_first_token``
  (prefill inside generate) and ``decode_token`` (per token; tokens/s in the header);
* ``features``: the head's context pass (backbone up to the feature layer);
* ``head_step``: one denoising step of the flow head (``head`` = all steps);
* ``predict_actions``: a full ``predict`` without reasoning (the action-rate path);
* ``predict_reasoning``: a full ``predict`` that also generates reasoning (<= max_new_tokens).

Presets: ``tiny`` (the test model, CPU) and ``qwen2.5-vl-3b`` (Qwen2.5-VL-3B dimensions with
random weights; default on CUDA). On CUDA: bf16, static KV cache, compiled head (CUDA graphs),
and a device sync only at stage boundaries.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .config import HeadConfig, VLAConfig
from .normalization import Normalizer
from .policy import Observation, VLAPolicy
from .tiny import build_random_backbone, build_tiny_policy, synthetic_chunks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def build_policy(preset: str, device: torch.device, image_size, cameras: int, new_tokens: int,
                 head_steps: int, seed: int = 0) -> VLAPolicy:
    """The policy to benchmark: the tiny test policy or random Qwen2.5-VL-3B dimensions."""
    names = [f"cam{i}" for i in range(cameras)]
    if preset == "tiny":
        pol = build_tiny_policy(image_size=image_size, camera_names=tuple(names), seed=seed,
                                max_new_tokens=new_tokens, head_steps=head_steps, device=device)
        return pol
    from .action_tokenizer import FastActionTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attn = "sdpa"
    model, processor = build_random_backbone(preset, image_size, seed, device, dtype, attn)
    config = VLAConfig(backbone=f"random-{preset}", horizon=16, action_dim=7, state_dim=7,
                       camera_names=names, image_size=tuple(image_size),
                       head=HeadConfig(num_steps=head_steps), max_new_tokens=new_tokens,
                       seed=seed)
    data = synthetic_chunks(2048, 16, 7, seed)
    tok = FastActionTokenizer(16, 7, bpe_vocab_size=2048).fit(data)
    return VLAPolicy.build(config, model, processor, tok,
                           Normalizer.fit(action=data, state=data[:, 0]))


def run(preset: str = "auto", device: str | None = None, runs: int = 20, warmup: int = 3,
        new_tokens: int = 32, head_steps: int = 10, image_size=(224, 224), cameras: int = 1,
        threads: int | None = None, seed: int = 0) -> dict:
    """Run the benchmark and return ``{"meta": {...}, "stages": {name: {p50_ms, p90_ms}}}``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if preset == "auto":
        preset = "qwen2.5-vl-3b" if dev.type == "cuda" else "tiny"
    if threads:
        torch.set_num_threads(threads)
    image_size = tuple(image_size)
    pol = build_policy(preset, dev, image_size, cameras, new_tokens, head_steps, seed)
    rng = np.random.default_rng(seed)
    obs = Observation(
        images={n: rng.integers(0, 255, (*image_size, 3), dtype=np.uint8)
                for n in pol.config.camera_names},
        state=np.zeros(pol.config.state_dim, np.float32), instruction="pick up the red cube")
    gen_inputs = pol.encode_observation(obs)
    feat_inputs = pol.encode_observation(obs, pol.feature_suffix("the cube is left of the bowl"))
    features, mask = pol.backbone_features(feat_inputs)
    state = torch.zeros(1, pol.config.state_dim, device=dev) if pol.config.state_dim else None
    static = {"cache_implementation": "static"} if dev.type == "cuda" else {}
    model = pol.backbone
    steps = pol.config.head.num_steps

    def prefill():
        with torch.no_grad():
            model(**gen_inputs, use_cache=True, logits_to_keep=1)

    ticks: list[list[float]] = []

    class StepClock(LogitsProcessor):
        """Timestamps every decoding step (called once per generated token)."""

        def __call__(self, input_ids, scores):
            _sync(dev)
            ticks[-1].append(time.perf_counter())
            return scores

    def generate():
        ticks.append([time.perf_counter()])
        with torch.no_grad():
            model.generate(**gen_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=pol.tokenizer.pad_token_id,
                           logits_processor=LogitsProcessorList([StepClock()]), **static)

    def head():
        pol.head.sample(features, state, mask)

    def predict(reasoning: bool):
        def fn():
            pol.config.reasoning_every = 1 if reasoning else 0
            pol.reset()
            pol.predict(obs)
        return fn

    stages = {
        "preprocess": _timeit(lambda: pol.encode_observation(obs), dev, runs, warmup),
        "prefill": _timeit(prefill, dev, runs, warmup),
        "generate": _timeit(generate, dev, runs, warmup),
        "features": _timeit(lambda: pol.backbone_features(feat_inputs), dev, runs, warmup),
        "head": _timeit(head, dev, runs, warmup),
        "predict_actions": _timeit(predict(False), dev, runs, warmup),
        "predict_reasoning": _timeit(predict(True), dev, runs, warmup),
    }
    ticks = ticks[warmup:]
    stages["time_to_first_token"] = [t[1] - t[0] for t in ticks]
    stages["decode_token"] = [b - a for t in ticks for a, b in zip(t[1:], t[2:])]
    stages["head_step"] = [t / steps for t in stages["head"]]
    out = {"meta": {
        "preset": preset, "device": str(dev) if dev.type == "cpu" else
        torch.cuda.get_device_name(dev), "dtype": str(pol.dtype), "runs": runs,
        "threads": torch.get_num_threads(), "image_size": image_size, "cameras": cameras,
        "prompt_tokens": int(gen_inputs["input_ids"].shape[1]),
        "feature_tokens": int(feat_inputs["input_ids"].shape[1]),
        "feature_layer": pol.feature_layer, "new_tokens": new_tokens, "head_steps": steps,
        "backbone_params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "head_params_M": round(sum(p.numel() for p in pol.head.parameters()) / 1e6, 2),
    }, "stages": {}}
    for name, ts in stages.items():
        ts = np.asarray(ts)
        out["stages"][name] = {"p50_ms": float(np.percentile(ts, 50) * 1e3),
                               "p90_ms": float(np.percentile(ts, 90) * 1e3)}
    if new_tokens > 1:
        per_token = out["stages"]["decode_token"]["p50_ms"] / 1e3
        out["meta"]["decode_tokens_per_s"] = round(1 / per_token, 1)
    return out


def format_report(result: dict) -> str:
    """Human-readable table of :func:`run`'s result."""
    lines = [" ".join(f"{k}={v}" for k, v in result["meta"].items()),
             f"{'stage':<20}{'p50 ms':>10}{'p90 ms':>10}"]
    for name, s in result["stages"].items():
        lines.append(f"{name:<20}{s['p50_ms']:>10.2f}{s['p90_ms']:>10.2f}")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign bench policy``; ``func`` runs the benchmark."""
    ap.add_argument("--preset", default="auto", choices=["auto", "tiny", "qwen2.5-vl-3b"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--head-steps", type=int, default=10)
    ap.add_argument("--image-size", type=int, nargs=2, default=None,
                    help="default 112 112 for tiny, 224 224 otherwise")
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the result to this file")
    ap.set_defaults(func=run_cli)


def main(argv=None) -> dict:
    """CLI entry point, as ``roboalign bench policy``; returns the result."""
    ap = argparse.ArgumentParser(prog="roboalign bench policy",
                                 description="VLA policy latency benchmark (no ROS)")
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(a: argparse.Namespace) -> dict:
    """Benchmark with parsed options, print the table; returns the result."""
    tiny = a.preset == "tiny" or (a.preset == "auto" and not torch.cuda.is_available()
                                  and a.device in (None, "cpu"))
    image_size = a.image_size or ((112, 112) if tiny else (224, 224))
    result = run(a.preset, a.device, a.runs, a.warmup, a.new_tokens, a.head_steps, image_size,
                 a.cameras, a.threads)
    print(format_report(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
