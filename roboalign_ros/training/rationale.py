"""ReFineVLA teacher rationales: generate, validate, store (append-only) and resume.

A teacher MLLM (any local image-text-to-text model directory; usually larger than the student)
reads a frame's images, the instruction and the episode's *future* actions and writes a
rationale with the four ReFineVLA sections, in order::

    <Observation> ... <Situation Analysis> ... <Spatial Reasoning> ... <Task Planning> ...

(closing tags such as ``</Observation>`` are optional). A rationale missing a section, with an
empty section or with too short a plan is rejected and the teacher is asked again (sampling
with a per-attempt seed) up to ``max_attempts`` times.

Storage, next to the episodes of each dataset:

* ``meta/rationales.jsonl``: accepted rationales, one JSON object per line
  ``{"episode_index", "frame_index", "rationale", "teacher", "attempts", "time"}``;
* ``meta/rationales_rejected.jsonl``: frames that failed every attempt (last text + problems).

Both files are append-only; each line is flushed and ``fsync``'d before the next request, so
an interruption loses at most the frame in flight. A torn line (crash mid-write) is ignored
on reading (with a warning) and the next append starts on a fresh line. A rerun skips every
key already accepted (and, unless ``retry_rejected``, already rejected).

``teacher: sim`` uses no model: :class:`~.sim_teacher.SimTeacher` writes the rationales from
the sim state recorded with each frame (datasets of ``roboalign record bulk``), stored the
same way (``"teacher": "sim"``), a whole episode per append.

CLI: ``python -m roboalign_ros.training.rationale --config config/training/rationale.yaml``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import time
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from ..model.reasoning import SECTIONS
from .config import ConfigError, DataConfig, RunConfig, check, load_config
from .sim_teacher import SimTeacher, SimTeacherConfig

log = logging.getLogger(__name__)

RATIONALES_FILE = "rationales.jsonl"
REJECTED_FILE = "rationales_rejected.jsonl"

DEFAULT_PROMPT = (
    "You are annotating a robot demonstration for training a robot policy.\n"
    "Instruction: {instruction}\n"
    "The images show the scene now. Over the next {horizon_s:.1f} s the robot executes these "
    "actions ({action_space}; columns {names}):\n{actions}\n"
    "Explain, as the robot, what it sees and why these actions accomplish the instruction. "
    "Answer with exactly these four sections, in this order, each starting with its tag:\n"
    "<Observation> the objects, their colours and positions, and the gripper state.\n"
    "<Situation Analysis> what has been done and what remains.\n"
    "<Spatial Reasoning> where the target is relative to the gripper and other objects.\n"
    "<Task Planning> a numbered plan of 3 to 8 short sub-actions from now to completion."
)


class Teacher(Protocol):
    """Anything that turns images + a prompt into text.

    ``generate(images, prompt)`` is enough; if it also takes ``seed``, each attempt gets its own
    (deterministic) seed so that a sampling teacher answers differently on a retry.
    """

    def generate(self, images: list[np.ndarray], prompt: str, seed: int = 0) -> str:
        """Return the teacher's answer for RGB uint8 ``images`` (HxWx3) and ``prompt``."""


# ---------------------------------------------------------------------------- validation
_TAG_RE = {s: re.compile(r"<\s*" + re.escape(s).replace(r"\ ", r"\s+") + r"\s*>", re.I)
           for s in SECTIONS}
_CLOSE_RE = re.compile(r"</\s*(?:" + "|".join(re.escape(s).replace(r"\ ", r"\s+")
                                              for s in SECTIONS) + r")\s*>", re.I)
_STEP_RE = re.compile(r"(?m)^\s*(?:\d+\s*[.):]|[-*\u2022]|step\s*\d+\s*[:.)]?)\s*\S")


@dataclasses.dataclass
class Validation:
    """Result of :func:`validate_rationale`: ``text`` is the canonical form when ``ok``."""

    ok: bool
    text: str
    sections: dict[str, str]
    problems: list[str]


def validate_rationale(text, min_section_chars: int = 3, min_plan_steps: int = 1) -> Validation:
    """Check that ``text`` holds the four sections in order, each non-empty.

    The plan counts numbered / bulleted lines as steps (a plan without any counts as one step).
    The canonical text keeps one line per section, without closing tags or preamble.
    """
    problems: list[str] = []
    if not isinstance(text, str):
        return Validation(False, "", {}, [f"not text: {type(text).__name__}"])
    found = []
    for name in SECTIONS:
        m = _TAG_RE[name].search(text)
        if m is None:
            problems.append(f"missing section <{name}>")
        else:
            found.append((m.start(), m.end(), name))
    if problems:
        return Validation(False, "", {}, problems)
    if [n for _, _, n in sorted(found)] != list(SECTIONS):
        problems.append("sections out of order: " + ", ".join(n for _, _, n in sorted(found)))
        return Validation(False, "", {}, problems)
    found.sort()
    sections = {}
    for i, (_, end, name) in enumerate(found):
        stop = found[i + 1][0] if i + 1 < len(found) else len(text)
        body = text[end:stop]
        close = _CLOSE_RE.search(body)
        if close is not None:
            body = body[:close.start()]
        body = body.strip()
        sections[name] = body
        if len(body) < min_section_chars:
            problems.append(f"section <{name}> is empty or too short ({len(body)} chars)")
    plan = sections.get("Task Planning", "")
    steps = len(_STEP_RE.findall(plan)) or (1 if plan else 0)
    if steps < min_plan_steps:
        problems.append(f"<Task Planning> has {steps} step(s), need >= {min_plan_steps}")
    canonical = "\n".join(f"<{n}> {sections[n]}" for n in SECTIONS)
    return Validation(not problems, canonical if not problems else "", sections, problems)


# ---------------------------------------------------------------------------- storage
def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            # a torn append (crash mid-write); the next append started a fresh line after it
            log.warning("%s: ignoring unreadable line %d (interrupted write)", path, i + 1)
            continue
        if not isinstance(rec, dict) or "episode_index" not in rec or "frame_index" not in rec:
            raise ValueError(f"{path}: line {i + 1} lacks episode_index/frame_index")
        out.append(rec)
    return out


def _append_jsonl(path: Path, record: dict) -> None:
    _append_jsonl_many(path, [record])


def _append_jsonl_many(path: Path, records: list[dict]) -> None:
    """Append records with one write and one fsync (a crash tears at most the last line)."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    data = b"\n" + data  # previous append was torn: start a fresh line
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class RationaleStore:
    """Rationales of one dataset (``<root>/meta/rationales*.jsonl``) by (episode, frame)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / "meta" / RATIONALES_FILE
        self.rejected_path = self.root / "meta" / REJECTED_FILE

    def accepted(self) -> dict[tuple[int, int], dict]:
        """Accepted records by key (a later line for the same key wins)."""
        return {(int(r["episode_index"]), int(r["frame_index"])): r
                for r in _read_jsonl(self.path)}

    def rejected(self) -> dict[tuple[int, int], dict]:
        """Rejected records by key."""
        return {(int(r["episode_index"]), int(r["frame_index"])): r
                for r in _read_jsonl(self.rejected_path)}

    def done_keys(self, include_rejected: bool = True) -> set[tuple[int, int]]:
        """Keys a resumed run skips."""
        keys = set(self.accepted())
        if include_rejected:
            keys |= set(self.rejected())
        return keys

    def add(self, episode: int, frame: int, rationale: str, **extra) -> None:
        """Append an accepted rationale (fsync'd)."""
        _append_jsonl(self.path, {"episode_index": int(episode), "frame_index": int(frame),
                                  "rationale": rationale, "time": time.time(), **extra})

    def add_many(self, records: list[tuple[int, int, str, dict]]) -> None:
        """Append accepted ``(episode, frame, rationale, extra)`` records with one fsync."""
        now = time.time()
        _append_jsonl_many(self.path, [
            {"episode_index": int(e), "frame_index": int(f), "rationale": r, "time": now, **x}
            for e, f, r, x in records])

    def reject(self, episode: int, frame: int, **extra) -> None:
        """Append a rejection record (fsync'd)."""
        _append_jsonl(self.rejected_path, {"episode_index": int(episode),
                                           "frame_index": int(frame), "time": time.time(),
                                           **extra})

    def lookup(self) -> dict[int, list[tuple[int, str]]]:
        """``episode -> [(frame, rationale), ...]`` sorted by frame (for SFT)."""
        out: dict[int, list[tuple[int, str]]] = {}
        for (ep, fr), rec in sorted(self.accepted().items()):
            out.setdefault(ep, []).append((fr, rec["rationale"]))
        return out


# ---------------------------------------------------------------------------- teachers
class HFTeacher:
    """A local image-text-to-text model (Auto classes, local files only) as the teacher."""

    def __init__(self, path: str, device: str | None = None, dtype: str = "auto",
                 max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.95,
                 image_size: tuple[int, int] | None = None, trust_remote_code: bool = False):
        import torch

        from ..model import backbone as bb

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.processor = bb.load_backbone(
            path, dev, bb.resolve_dtype(dtype, dev), "auto", trust_remote_code)
        self.device, self.name = dev, str(path)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.image_size = image_size

    def generate(self, images: list[np.ndarray], prompt: str, seed: int = 0) -> str:
        """Sampled (temperature > 0) or greedy answer; ``seed`` makes a sample reproducible."""
        import torch
        from PIL import Image

        pil = [Image.fromarray(np.asarray(im)) for im in images]
        if self.image_size:
            h, w = self.image_size
            pil = [im.resize((w, h), Image.BILINEAR) for im in pil]
        content = [{"type": "image"} for _ in pil] + [{"type": "text", "text": prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=pil or None, return_tensors="pt")
        inputs = inputs.to(self.device)
        torch.manual_seed(seed)
        sample = self.temperature > 0
        kw = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p) if sample \
            else dict(do_sample=False)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **kw,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.tokenizer.decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------------------- config
@dataclasses.dataclass
class TeacherConfig:
    """The teacher model.

    Fields:
        path: local model directory (or HF repo id present in the local cache).
        device: "cuda", "cpu" or None (CUDA when available).
        dtype: "auto", "bfloat16", "float16" or "float32".
        max_new_tokens, temperature, top_p: generation settings (temperature 0 = greedy; retries
            then return the same text, so keep it > 0 when max_attempts > 1).
        image_size: [height, width] images are resized to (null = as recorded).
        trust_remote_code: passed to the Auto classes.
    """

    path: str = ""
    device: str | None = None
    dtype: str = "auto"
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    image_size: list[int] | None = None
    trust_remote_code: bool = False


@dataclasses.dataclass
class RationaleConfig:
    """``rationale`` stage.

    Fields:
        data: datasets to annotate (rationales are written into each root's ``meta/``).
        teacher: the teacher model (ignored when ``run_rationale`` gets a ``teacher`` object),
            or ``sim``: rationales from the recorded sim state (options in ``sim``; prompt,
            cameras and future actions are then unused).
        sim: options of the ``sim`` teacher (:class:`~.sim_teacher.SimTeacherConfig`).
        frames_per_episode: frames annotated per episode, evenly spaced (0 = every
            ``data.frame_stride``-th frame).
        future_steps: future actions shown to the teacher (from the frame on).
        future_stride: show every N-th of those actions.
        cameras: cameras shown to the teacher (empty = all of the dataset's).
        prompt_template: with ``{instruction}``, ``{actions}``, ``{names}``, ``{action_space}``,
            ``{horizon_s}``.
        max_attempts: teacher calls per frame before it is recorded as rejected.
        min_section_chars, min_plan_steps: validation thresholds.
        retry_rejected: on resume, also retry frames recorded as rejected.
        max_new: stop after this many new frames this run (0 = no limit).
    """

    section = "rationale"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(
        output_dir="runs/rationale"))
    teacher: TeacherConfig | str = dataclasses.field(default_factory=TeacherConfig)
    sim: SimTeacherConfig = dataclasses.field(default_factory=SimTeacherConfig)
    frames_per_episode: int = 4
    future_steps: int = 32
    future_stride: int = 4
    cameras: list[str] = dataclasses.field(default_factory=list)
    action_space: str = "joint_position"
    prompt_template: str = DEFAULT_PROMPT
    max_attempts: int = 3
    min_section_chars: int = 3
    min_plan_steps: int = 1
    retry_rejected: bool = False
    max_new: int = 0

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        p = self.section
        self.data.validate(f"{p}.data")
        self.run.validate(f"{p}.run")
        check(p, "frames_per_episode", self.frames_per_episode >= 0, "must be >= 0",
              self.frames_per_episode)
        check(p, "future_steps", self.future_steps >= 1, "must be >= 1", self.future_steps)
        check(p, "future_stride", self.future_stride >= 1, "must be >= 1", self.future_stride)
        check(p, "max_attempts", self.max_attempts >= 1, "must be >= 1", self.max_attempts)
        check(p, "min_plan_steps", self.min_plan_steps >= 0, "must be >= 0",
              self.min_plan_steps)
        check(p, "max_new", self.max_new >= 0, "must be >= 0", self.max_new)
        if isinstance(self.teacher, str):
            check(p, "teacher", self.teacher == "sim", "must be a model section or 'sim'",
                  self.teacher)
        else:
            check(p, "teacher.max_new_tokens", self.teacher.max_new_tokens >= 1,
                  "must be >= 1", self.teacher.max_new_tokens)
            check(p, "teacher.temperature", self.teacher.temperature >= 0, "must be >= 0",
                  self.teacher.temperature)
        self.sim.validate(f"{p}.sim")
        try:
            self.prompt_template.format(instruction="x", actions="x", names="x",
                                        action_space="x", horizon_s=1.0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{p}.prompt_template: bad placeholder {exc}") from exc


def frames_to_annotate(length: int, per_episode: int, stride: int = 1) -> list[int]:
    """Evenly spaced frame indices of an episode (deterministic)."""
    if length <= 0:
        return []
    if per_episode <= 0:
        return list(range(0, length, stride))
    return sorted({int(round(x)) for x in np.linspace(0, length - 1, min(per_episode, length))})


def format_actions(actions: np.ndarray, fps: float, stride: int) -> str:
    """One line per shown action: ``t+0.40s: [0.120, -0.300, ...]``."""
    lines = []
    for i in range(0, len(actions), stride):
        vals = ", ".join(f"{v:.3f}" for v in actions[i])
        lines.append(f"t+{i / fps:.2f}s: [{vals}]")
    return "\n".join(lines)


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def run_rationale(config, overrides=(), teacher: Teacher | None = None) -> dict:
    """Annotate the configured datasets; returns counts ``{"accepted", "rejected", "skipped"}``.

    ``config``: a :class:`RationaleConfig`, a dict or a YAML path. ``teacher``: use this object
    instead of loading ``config.teacher.path`` (tests, remote teachers).
    """
    from .common import progress, seed_everything, summary_writer

    cfg = load_config(RationaleConfig, config, overrides)
    seed_everything(cfg.run.seed)
    if teacher is None and cfg.teacher == "sim":
        teacher = SimTeacher(cfg.sim)
    if teacher is None:
        if not cfg.teacher.path:
            raise ConfigError("rationale.teacher.path: must name a local model directory")
        t = cfg.teacher
        teacher = HFTeacher(t.path, t.device, t.dtype, t.max_new_tokens, t.temperature, t.top_p,
                            tuple(t.image_size) if t.image_size else None, t.trust_remote_code)
    teacher_name = getattr(teacher, "name", type(teacher).__name__)
    from_state = hasattr(teacher, "episode_rationales")  # writes from recorded state
    takes_seed = not from_state and "seed" in inspect.signature(teacher.generate).parameters
    counts = {"accepted": 0, "rejected": 0, "skipped": 0, "attempts": 0}
    tb = summary_writer(cfg.run)
    new = 0
    try:
        for root in cfg.data.roots:
            reader = _open_dataset(root)
            cams = cfg.cameras or list(reader.cameras)
            missing = [c for c in cams if c not in reader.cameras]
            if missing and not from_state:
                raise ConfigError(f"rationale.cameras: {missing} not in dataset {root} "
                                  f"(has {list(reader.cameras)})")
            store = RationaleStore(root)
            done = store.done_keys(include_rejected=not cfg.retry_rejected)
            episodes = cfg.data.episodes or list(range(len(reader)))
            todo = []
            for ep in episodes:
                if not 0 <= ep < len(reader):
                    raise ConfigError(f"rationale.data.episodes: {ep} out of range for {root}")
                for fr in frames_to_annotate(reader.episodes[ep].length, cfg.frames_per_episode,
                                             cfg.data.frame_stride):
                    if (ep, fr) in done:
                        counts["skipped"] += 1
                    else:
                        todo.append((ep, fr))
            bar = progress(total=len(todo), desc=f"rationales {Path(root).name}",
                           enable=cfg.run.progress)
            if from_state:
                new = _annotate_from_state(cfg, reader, store, teacher, todo, counts, new, bar,
                                           tb)
                bar.close()
                continue
            cur_ep, episode = None, None
            for ep, fr in todo:
                if cfg.max_new and new >= cfg.max_new:
                    break
                if ep != cur_ep:
                    episode, cur_ep = reader.episode(ep), ep
                images = [episode.frames[c][fr] for c in cams]
                future = episode.actions[fr:fr + cfg.future_steps]
                prompt = cfg.prompt_template.format(
                    instruction=episode.task, action_space=cfg.action_space,
                    names=", ".join(reader.action_names),
                    horizon_s=len(future) / reader.fps,
                    actions=format_actions(future, reader.fps, cfg.future_stride))
                problems: list[str] = []
                text = ""
                for attempt in range(cfg.max_attempts):
                    counts["attempts"] += 1
                    seed = _seed(cfg.run.seed, root, ep, fr, attempt)
                    text = teacher.generate(images, prompt, seed=seed) if takes_seed \
                        else teacher.generate(images, prompt)
                    v = validate_rationale(text, cfg.min_section_chars, cfg.min_plan_steps)
                    if v.ok:
                        store.add(ep, fr, v.text, teacher=teacher_name, attempts=attempt + 1)
                        counts["accepted"] += 1
                        break
                    problems = v.problems
                    log.info("episode %d frame %d attempt %d rejected: %s", ep, fr, attempt + 1,
                             "; ".join(problems))
                else:
                    store.reject(ep, fr, teacher=teacher_name, attempts=cfg.max_attempts,
                                 problems=problems, last_text=str(text)[:2000])
                    counts["rejected"] += 1
                new += 1
                bar.update(1)
                if tb is not None:
                    tb.add_scalar("rationale/accepted", counts["accepted"], new)
                    tb.add_scalar("rationale/rejected", counts["rejected"], new)
            bar.close()
    finally:
        if tb is not None:
            tb.close()
    return counts


def _annotate_from_state(cfg, reader, store: RationaleStore, teacher, todo, counts: dict,
                         new: int, bar, tb) -> int:
    """Annotate ``todo`` (episode, frame) keys a whole episode at a time; return ``new``."""
    by_episode: dict[int, list[int]] = {}
    for ep, fr in todo:
        by_episode.setdefault(ep, []).append(fr)
    for ep, frames in by_episode.items():
        if cfg.max_new:
            frames = frames[:max(0, cfg.max_new - new)]
        if not frames:
            break
        try:
            texts = teacher.episode_rationales(reader, reader.episode(ep, decode_video=False),
                                               frames)
        except ValueError as exc:
            raise ConfigError(f"rationale.teacher: {exc}") from exc
        accepted = []
        for fr in frames:
            counts["attempts"] += 1
            v = validate_rationale(texts[fr], cfg.min_section_chars, cfg.min_plan_steps)
            if v.ok:
                accepted.append((ep, fr, v.text, {"teacher": teacher.name, "attempts": 1}))
            else:  # a state the teacher cannot describe: recorded, never retried in vain
                store.reject(ep, fr, teacher=teacher.name, attempts=1, problems=v.problems,
                             last_text=texts[fr][:2000])
                counts["rejected"] += 1
        store.add_many(accepted)
        counts["accepted"] += len(accepted)
        new += len(frames)
        bar.update(len(frames))
        if tb is not None:
            tb.add_scalar("rationale/accepted", counts["accepted"], new)
            tb.add_scalar("rationale/rejected", counts["rejected"], new)
    return new


def _open_dataset(root):
    from ..data import DatasetReader

    if not Path(root).is_dir():
        raise ConfigError(f"data.roots: dataset directory not found: {root}")
    try:
        return DatasetReader(root)
    except ValueError as exc:
        raise ConfigError(f"data.roots: {root} is not a readable dataset: {exc}") from exc


def main(argv=None) -> int:
    """CLI: ``rationale --config X [--set key=value ...]``."""
    from . import stages

    return stages.main("rationale", argv)


if __name__ == "__main__":
    raise SystemExit(main())
