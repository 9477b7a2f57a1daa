"""Helpers shared by the stages: seeding, progress bars, TensorBoard, checkpoints."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state"  # sub-directory of a checkpoint with optimizer / rng state
FINAL_DIR = "policy"


def cpu_processes() -> bool:
    """True in a multi-process launch on a machine without CUDA.

    accelerate then has to be told to run the processes on CPU (gloo): otherwise each would
    train alone, as N independent single-process runs.
    """
    import torch

    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def mixed_precision(run_cfg) -> str:
    """``run.mixed_precision`` on CUDA; "no" (float32) on CPU."""
    import torch

    return run_cfg.mixed_precision if torch.cuda.is_available() else "no"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; make CPU kernels deterministic."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def progress(total: int | None = None, desc: str = "", enable: bool = True, initial: int = 0):
    """A tqdm progress bar (disabled on non-main processes and when ``enable`` is False)."""
    from tqdm.auto import tqdm

    main = int(os.environ.get("RANK", "0")) == 0
    return tqdm(total=total, desc=desc, disable=not (enable and main), initial=initial,
                dynamic_ncols=True)


def summary_writer(run_cfg, is_main: bool | None = None):
    """TensorBoard writer at ``<output_dir>/tb`` (None on non-main processes)."""
    if is_main is None:
        is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    path = Path(run_cfg.output_dir) / "tb"
    path.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(path))


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>`` directories of a run, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(run_cfg) -> Path | None:
    """The checkpoint to resume from according to ``run.resume`` (None = start fresh)."""
    if run_cfg.resume == "never":
        return None
    if run_cfg.resume == "auto":
        done = [p for p in checkpoints(run_cfg.output_dir) if (p / "COMPLETE").is_file()]
        return done[-1] if done else None
    path = Path(run_cfg.resume)
    if not path.is_dir():
        from .config import ConfigError

        raise ConfigError(f"run.resume: checkpoint directory not found: {path}")
    return path


def rotate_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (0 = keep all)."""
    if keep <= 0:
        return
    for p in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def mark_complete(path: Path, info: dict | None = None) -> None:
    """Write ``COMPLETE`` last, so a checkpoint interrupted mid-write is never resumed from."""
    (path / "COMPLETE").write_text(json.dumps(info or {}))


def save_policy(policy, directory: str | Path, accelerator=None, model=None) -> Path:
    """Write ``policy`` in the ``VLAPolicy.save_pretrained`` layout.

    Under accelerate, ``model`` is the prepared (wrapped) backbone; its full state dict is
    gathered (FSDP / ZeRO-3) and only the main process writes.
    """
    directory = Path(directory)
    if accelerator is None or model is None:
        return policy.save_pretrained(directory)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        policy.save_pretrained(directory, save_backbone=False)
        backbone = accelerator.unwrap_model(model)
        backbone.save_pretrained(directory / "backbone", state_dict=state,
                                 safe_serialization=True)
        policy.processor.save_pretrained(directory / "backbone")
    accelerator.wait_for_everyone()
    return directory
