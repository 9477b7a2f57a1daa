#!/usr/bin/env python3
"""Copy a trained policy into the repository (e.g. models/roboalign_mini_sim) with provenance.

    python scripts/ship_policy.py runs/mini/head_sft/policy models/roboalign_mini_sim \
        --repro runs/mini [--eval runs/mini/eval/sft] [--graph runs/mini/graph/...]

Writes the checkpoint (safetensors + JSON, hard links resolved, at most --max-mb) and
``provenance.json``: the commit, the repro's stages with their wall times and results, the
stage configs and overrides that ran, a fingerprint of the dataset (SHA-256 of its metadata
and data files) and, if given, the evaluation summaries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fingerprint(dataset: Path) -> dict:
    """SHA-256 over the dataset's meta and data files (videos by size: they are large)."""
    h = hashlib.sha256()
    files = sorted(p for p in dataset.rglob("*") if p.is_file())
    for p in files:
        rel = str(p.relative_to(dataset))
        h.update(rel.encode())
        if p.suffix == ".mp4":
            h.update(str(p.stat().st_size).encode())
        else:
            h.update(p.read_bytes())
    info = json.loads((dataset / "meta" / "info.json").read_text())
    return {"sha256": h.hexdigest(), "files": len(files),
            "episodes": info.get("total_episodes"), "frames": info.get("total_frames"),
            "path": str(dataset)}


def main(argv: list[str] | None = None) -> int:
    """Ship POLICY into OUT; exit 1 if it is larger than --max-mb."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--repro", type=Path, required=True, help="the repro directory it came from")
    ap.add_argument("--eval", type=Path, nargs="*", default=(),
                    help="evaluation directories with summary.json")
    ap.add_argument("--max-mb", type=float, default=25.0)
    a = ap.parse_args(argv)
    if a.out.exists():
        shutil.rmtree(a.out)
    shutil.copytree(a.policy, a.out, copy_function=shutil.copy)   # hard links -> files
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file()) / 2**20
    if size > a.max_mb:
        print(f"{a.out}: {size:.1f} MB > --max-mb {a.max_mb}", file=sys.stderr)
        return 1
    state = json.loads((a.repro / "repro_state.json").read_text())
    repro_cfg = a.repro / "repro.yaml"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    configs = {}
    for name in ("ground", "sft", "head", "rationale"):
        path = ROOT / "config" / "training" / "mini" / f"{name}.yaml"
        configs[name] = path.read_text()
    evals = {}
    for d in a.eval:
        for summary in sorted(d.rglob("summary.json")):
            evals[str(summary.relative_to(ROOT) if summary.is_relative_to(ROOT) else summary)] = \
                json.loads(summary.read_text())
    provenance = {
        "shipped": time.strftime("%Y-%m-%d %H:%M:%S"),
        "source": str(a.policy), "commit": commit, "size_mb": round(size, 2),
        "command": f"roboalign repro mini --config {repro_cfg}" if repro_cfg.exists()
        else "roboalign repro mini",
        "repro_config": repro_cfg.read_text() if repro_cfg.exists() else None,
        "stages": state, "stage_configs": configs,
        "dataset": fingerprint(a.repro / "dataset"), "evaluation": evals,
    }
    (a.out / "provenance.json").write_text(json.dumps(provenance, indent=1))
    print(f"{a.out}: {size:.1f} MB, provenance.json written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
