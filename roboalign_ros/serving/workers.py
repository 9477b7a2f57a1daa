"""The threads a served policy runs on (no rclpy): the action path and, beside it, reasoning.

``policy_node`` (and the headless evaluator) feed the newest image, joint state and instruction
into a :class:`PolicyWorker`; it runs ``policy.predict`` off the ROS callbacks on the newest
consistent observation (:mod:`.gate`) and hands back each output with the observation stamp it
used. A chunk whose observation has grown older than ``max_image_age`` during inference, or
whose instruction was replaced meanwhile, is dropped instead of published.

Reasoning runs apart from the action path (the dual-rate design of Helix, GR00T and Hi Robot):
a :class:`ReasoningWorker` generates on its own thread, on the newest observation the action
path accepted, at its own rate and at once on a new instruction; the action path conditions
each chunk on the newest *finished* reasoning and never waits for one in progress.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .gate import (
    IMAGE,
    INSTRUCTION,
    JOINT_STATE,
    InputLimits,
    ObservationGate,
    Snapshot,
    image_kind,
    instruction_problem,
)


@dataclass
class Decision:
    """What one worker iteration produced: an output, or the reason it did not act."""

    snapshot: Snapshot
    output: object | None = None  # PolicyOutput
    blocked: str | None = None
    error: str | None = None
    observation_age: float = 0.0  # at the start of inference (s)
    dropped: bool = False  # inference ran but its chunk must not be published (``blocked``)
    # a chunk dropped for its age: the output anyway, for its reasoning (a slow reasoning call
    # is the usual reason, and the text still describes the instruction in force)
    late_output: object | None = None
    # the finished reasoning the output was conditioned on (with a ReasoningWorker)
    reasoning: ReasoningResult | None = None


@dataclass
class OffPathResult:
    """One finished job of an :class:`OffPathWorker`.

    ``sequence`` counts the worker's jobs from 1; ``stamp`` is the time of the observation it
    ran on; ``value`` is what the work function returned, None with ``error``.
    """

    sequence: int
    stamp: float
    instruction: str
    value: object | None = None
    seconds: float = 0.0
    error: str | None = None


class ReasoningResult(OffPathResult):
    """One finished generation of a :class:`ReasoningWorker` (``reasoning``: a ``Reasoning``)."""

    @property
    def reasoning(self):
        """What ``reason`` returned (a ``model.Reasoning``), None with ``error``."""
        return self.value


class OffPathWorker:
    """Runs slow work on the newest observation on its own thread, off the action path.

    ``work(observation)`` is the slow function; ``make_observation(snapshot)`` adapts a
    snapshot. The action path hands every observation it accepts to :meth:`offer` (constant
    time); the worker runs on the newest one when ``period`` seconds have passed since its
    last start, and at once when the instruction changes. ``on_result`` receives every result
    (from the worker thread). On CPU the thread lowers its own scheduling priority, so the
    action path keeps the cores when both want them.
    """

    result_type = OffPathResult
    name = "off_path_worker"

    def __init__(self, work: Callable, make_observation: Callable[[Snapshot], object],
                 on_result: Callable[[OffPathResult], None] | None = None,
                 period: float = 1.0, nice: int = 10):
        if not period >= 0:
            raise ValueError(f"{self.name} period: must be >= 0 s, got {period!r}")
        self._work, self._make_observation = work, make_observation
        self._on_result = on_result or (lambda result: None)
        self.period, self.nice = period, nice
        self._lock = threading.Lock()
        self._offered: Snapshot | None = None
        self._latest: OffPathResult | None = None
        self._started_for: str | None = None   # instruction of the last job started
        self._last_start = -np.inf
        self._sequence = 0
        self._busy_since: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, snap: Snapshot) -> None:
        """The newest observation the action path accepted (kept; the newest one wins)."""
        with self._lock:
            self._offered = snap
        self._wake.set()

    def latest(self, instruction: str) -> OffPathResult | None:
        """The newest successful result for ``instruction`` (None: none yet). Never blocks."""
        with self._lock:
            r = self._latest
        return r if r is not None and r.value is not None and \
            r.instruction == instruction else None

    def busy_for(self) -> float:
        """Seconds the running job has taken so far (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _due(self) -> Snapshot | None:
        with self._lock:
            snap = self._offered
            if snap is None:
                return None
            new_task = snap.instruction != self._started_for
            if not new_task and time.monotonic() - self._last_start < self.period:
                return None
            self._offered = None
            return snap

    def step(self) -> OffPathResult | None:
        """One job if one is due (what the thread runs; callable directly in tests)."""
        snap = self._due()
        if snap is None:
            return None
        self._started_for, self._last_start = snap.instruction, time.monotonic()
        self._busy_since = time.monotonic()
        try:
            value, error = self._work(self._make_observation(snap)), None
        except Exception as exc:  # a failing job must not stop the action path
            value, error = None, f"{type(exc).__name__}: {exc}"
        finally:
            seconds = time.monotonic() - self._busy_since
            self._busy_since = None
        self._sequence += 1
        result = self.result_type(self._sequence, snap.image_stamp, snap.instruction,
                                  value, seconds, error)
        try:
            self._on_result(result)  # published before any chunk may name it
        finally:
            if value is not None:
                with self._lock:
                    self._latest = result
        return result

    def start(self) -> None:
        """Start the worker thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current job."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        if self.nice:
            try:  # this thread only (Linux: a thread's nice value is its own)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except (AttributeError, OSError):
                pass
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1 if self.period == 0 else min(self.period, 0.1))
            self._wake.clear()
            if self._stop.is_set():
                break
            self.step()


class ReasoningWorker(OffPathWorker):
    """Generates reasoning off the action path (:class:`OffPathWorker` with ``work=reason``).

    The action path conditions on :meth:`latest`, the newest finished reasoning for the
    instruction in force, and never waits for a generation.
    """

    result_type = ReasoningResult
    name = "reasoning_worker"

    def latest_text(self, instruction: str) -> str | None:
        """The generated text of :meth:`latest` (None: none yet). Never blocks."""
        result = self.latest(instruction)
        return result.reasoning.text if result is not None else None


class AttentionWorker(OffPathWorker):
    """Computes attention overlays off the action path (``work``: observation -> overlays).

    ``policy_node`` runs it at a low rate on the newest accepted observation, with its own
    eager-attention copy of the model (``model.attention.AttentionExplainer``).
    """

    name = "attention_worker"


def attention_overlays(explainer, latest_reasoning: Callable[[str], str | None],
                       source: str = "action head") -> Callable:
    """An :class:`AttentionWorker` job: observation -> ``{camera: overlay [H, W, 3] uint8}``.

    ``explainer``: a ``model.attention.AttentionExplainer``; ``latest_reasoning(instruction)``
    the newest generated text to explain (None: the head's map only; it never generates).
    ``source``: which map to draw ("action head", "reasoning", a section name, "action
    tokens"); when the observation has no such map, the head's.
    """
    def work(observation) -> dict[str, np.ndarray]:
        maps = explainer.explain(observation, latest_reasoning(observation.instruction),
                                 generate=False, head_only=source == "action head")
        chosen = source if source in maps.maps else maps.sources[-1]
        return {camera: maps.overlay(chosen, camera) for camera in maps.images}

    return work


class PolicyWorker:
    """Runs ``predict`` in its own thread on the newest observation; updates never block.

    ``make_observation(snapshot) -> Observation`` adapts a snapshot to the policy's input,
    ``on_decision(decision)`` receives every result (called from the worker thread), ``clock``
    gives the time stamps are compared with. Each new image triggers at most one decision;
    ``min_period`` caps the decision rate. Joint states are kept for ``state_history`` samples
    and each image is paired with the one nearest its stamp, so the skew the gate checks is the
    real one, not the inference delay. Inputs are bounded by ``limits``: instructions by
    characters here and by tokens (``count_tokens``, in the worker thread) before inference;
    the node refuses images by their header through :meth:`refuse`.

    With a ``reasoner``, every accepted observation is offered to it and ``predict`` is called
    as ``predict(observation, reasoning)`` with its newest finished result's ``reasoning``
    (None: none yet for this instruction); the decision records that result. ``observers``
    (other :class:`OffPathWorker`, e.g. an :class:`AttentionWorker`) are offered every
    accepted observation too; the action path never waits for them.
    """

    def __init__(self, predict: Callable, make_observation: Callable[[Snapshot], object],
                 gate: ObservationGate, on_decision: Callable[[Decision], None],
                 clock: Callable[[], float], min_period: float = 0.0,
                 state_history: int = 256, limits: InputLimits | None = None,
                 count_tokens: Callable[[str], int] | None = None,
                 reasoner: ReasoningWorker | None = None,
                 cameras: tuple[str, ...] = ("scene",), camera_history: int = 8,
                 observers: tuple[OffPathWorker, ...] = ()):
        self._predict, self._make_observation = predict, make_observation
        self.reasoner = reasoner
        self.observers = list(observers)
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras: need distinct names, got {list(cameras)}")
        self.cameras = tuple(cameras)
        # the other cameras' recent frames: each is paired with the first camera's by stamp
        self._frames = {c: deque(maxlen=camera_history) for c in self.cameras[1:]}
        self.gate, self._on_decision, self._clock = gate, on_decision, clock
        self.min_period = min_period
        self.limits = limits or InputLimits()
        self._count_tokens = count_tokens
        self._token_check: tuple[str, str | None] | None = None  # (instruction, problem)
        self._busy_since: float | None = None  # monotonic start of the running inference
        self._snap = Snapshot()
        # recent joint states: each image is paired with the state nearest its stamp
        self._states: deque[tuple[float, np.ndarray]] = deque(maxlen=state_history)
        self._lock = threading.Lock()
        self._new_image = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # inputs (called from ROS callbacks: constant time, no copies of big arrays)
    def update_image(self, image: np.ndarray, stamp: float, name: str | None = None) -> None:
        """Add a camera's newest frame (the first camera unless ``name`` names another).

        A frame of the first camera triggers a decision; the others wait to be paired.
        """
        first = name is None or name == self.cameras[0]
        if not first and name not in self._frames:
            raise ValueError(f"camera {name!r}: not one of the policy's {list(self.cameras)}")
        with self._lock:
            if first:
                self._snap.image, self._snap.image_stamp = image, stamp
                self._snap.refused.pop(IMAGE, None)
            else:
                self._frames[name].append((stamp, image))
                self._snap.refused.pop(image_kind(name), None)
        if first:
            self._new_image.set()

    def refuse_image(self, camera: str | None, reason: str) -> None:
        """Record that ``camera``'s newest frame was refused (None or the first: IMAGE)."""
        first = camera is None or camera == self.cameras[0]
        self.refuse(IMAGE if first else image_kind(camera), reason)

    def update_state(self, state: np.ndarray, stamp: float) -> None:
        """Add a proprioceptive state sample (kept for pairing with images by stamp)."""
        with self._lock:
            self._states.append((stamp, state))
            self._snap.refused.pop(JOINT_STATE, None)

    def refuse(self, kind: str, reason: str) -> None:
        """Record that the newest ``kind`` input (IMAGE, JOINT_STATE) was refused and why.

        The policy stays blocked with ``reason`` until a good sample of that kind arrives; a new
        reason triggers a decision at once, so the status names it without waiting.
        """
        with self._lock:
            changed = self._snap.refused.get(kind) != reason
            self._snap.refused[kind] = reason
        if changed:
            self._new_image.set()

    def set_instruction(self, text: str) -> str | None:
        """Set the instruction the next decisions are conditioned on.

        Returns why it is refused (too long), or None; a refused instruction blocks the policy
        until a valid one arrives (acting on the previous task would be wrong too).
        """
        problem = instruction_problem(text, self.limits)
        with self._lock:
            self._snap.instruction = "" if problem else text
            if problem:
                self._snap.refused[INSTRUCTION] = problem
            else:
                self._snap.refused.pop(INSTRUCTION, None)
        if problem:
            self._new_image.set()  # the status names the refusal at once
        return problem

    def busy_for(self) -> float:
        """Seconds the running inference has taken so far (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    # lifecycle
    def start(self) -> None:
        """Start the worker thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy_worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current inference (a CPU inference with reasoning takes seconds)."""
        self._stop.set()
        self._new_image.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> Snapshot:
        with self._lock:
            s = self._snap
            state = state_stamp = None
            if self._states:
                if s.image_stamp is None:
                    state_stamp, state = self._states[-1]
                else:
                    state_stamp, state = min(self._states,
                                             key=lambda item: abs(item[0] - s.image_stamp))
            images, stamps = {}, {}
            if s.image is not None:
                images[self.cameras[0]], stamps[self.cameras[0]] = s.image, s.image_stamp
            for cam, frames in self._frames.items():
                if frames:  # the frame nearest the first camera's (approximate time)
                    t, img = frames[-1] if s.image_stamp is None else \
                        min(frames, key=lambda f: abs(f[0] - s.image_stamp))
                    images[cam], stamps[cam] = img, t
            return Snapshot(s.image, s.image_stamp, state, state_stamp, s.instruction,
                            images, dict(s.refused), stamps, self.cameras)

    def _tokens_problem(self, instruction: str) -> str | None:
        if self._count_tokens is None or not instruction:
            return None
        if self._token_check is None or self._token_check[0] != instruction:
            self._token_check = (instruction, instruction_problem(instruction, self.limits,
                                                                  self._count_tokens))
        return self._token_check[1]

    def step(self) -> Decision:
        """One decision on the newest inputs (what the thread runs; callable directly in tests)."""
        snap = self._take()
        now = self._clock()
        reason = self.gate.check(snap, now) or self._tokens_problem(snap.instruction)
        if reason is not None:
            return Decision(snap, blocked=reason)
        age = now - snap.image_stamp
        conditioned = None
        for observer in self.observers:
            observer.offer(snap)
        if self.reasoner is not None:
            self.reasoner.offer(snap)
            conditioned = self.reasoner.latest(snap.instruction)
        self._busy_since = time.monotonic()
        try:
            obs = self._make_observation(snap)
            output = self._predict(obs) if self.reasoner is None else \
                self._predict(obs, conditioned.reasoning if conditioned else None)
        except Exception as exc:  # a failing model must not kill the node: report it
            return Decision(snap, error=f"{type(exc).__name__}: {exc}", observation_age=age)
        finally:
            self._busy_since = None
        # what is published must still be fresh, and for the instruction in force
        max_age = self.gate.limits.max_image_age
        age_now = self._clock() - snap.image_stamp
        with self._lock:
            instruction = self._snap.instruction
        if age_now > max_age:
            return Decision(snap, blocked=f"chunk dropped: observation {age_now:.2f} s old after "
                            f"inference > max_image_age {max_age:.2f} s", observation_age=age,
                            dropped=True, late_output=output)
        if instruction != snap.instruction:
            return Decision(snap, blocked="chunk dropped: the instruction changed during "
                            "inference", observation_age=age, dropped=True)
        return Decision(snap, output=output, observation_age=age, reasoning=conditioned)

    def _run(self) -> None:
        last = -np.inf
        while not self._stop.is_set():
            if not self._new_image.wait(timeout=0.5):
                # no new image: still tell the node (a stopped camera must show up in status)
                snap = self._take()
                reason = (self.gate.check(snap, self._clock())
                          or self._tokens_problem(snap.instruction) or "no new image for 0.5 s")
                self._on_decision(Decision(snap, blocked=reason))
                continue
            self._new_image.clear()
            if self._stop.is_set():
                break
            wait = last + self.min_period - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
            last = time.monotonic()
            self._on_decision(self.step())
