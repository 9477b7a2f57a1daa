"""Serving a VLA policy on a live robot (no rclpy): observation gating and a worker thread.

``policy_node`` feeds the newest image, joint state and instruction into a
:class:`PolicyWorker`; the worker runs ``policy.predict`` off the ROS callbacks on the newest
consistent observation and hands back each output with the observation stamp it used.
:class:`ObservationGate` decides whether an observation may be acted on at all: a stale image,
an image/joint-state skew beyond the limit or a missing instruction blocks the policy, with the
reason in plain words.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GateLimits:
    """When an observation is too old or inconsistent to act on (seconds)."""

    max_image_age: float = 0.5
    max_state_skew: float = 0.1
    require_instruction: bool = True

    def __post_init__(self):
        if not self.max_image_age > 0 or not self.max_state_skew > 0:
            raise ValueError("max_image_age / max_state_skew: must be > 0")


@dataclass
class Snapshot:
    """The newest inputs, as copied for one decision."""

    image: np.ndarray | None = None
    image_stamp: float | None = None
    state: np.ndarray | None = None
    state_stamp: float | None = None
    instruction: str = ""
    extra_images: dict[str, np.ndarray] = field(default_factory=dict)


class ObservationGate:
    """Refuses stale or inconsistent observations, saying why."""

    def __init__(self, limits: GateLimits, needs_state: bool = True):
        self.limits, self.needs_state = limits, needs_state

    def check(self, snap: Snapshot, now: float) -> str | None:
        """Return None when ``snap`` may be acted on at ``now``, else the reason it may not."""
        lim = self.limits
        if lim.require_instruction and not snap.instruction.strip():
            return "no instruction yet (publish one on the instruction topic)"
        if snap.image is None:
            return "no image yet"
        age = now - snap.image_stamp
        if age > lim.max_image_age:
            return f"image {age:.2f} s old > max_image_age {lim.max_image_age:.2f} s"
        if age < -lim.max_state_skew:
            return f"image stamped {-age:.2f} s in the future (clock mismatch?)"
        if self.needs_state:
            if snap.state is None:
                return "no joint state yet"
            skew = abs(snap.image_stamp - snap.state_stamp)
            if skew > lim.max_state_skew:
                return (f"image/joint-state skew {skew:.3f} s > max_state_skew "
                        f"{lim.max_state_skew:.3f} s")
        return None


@dataclass
class Decision:
    """What one worker iteration produced: an output, or the reason it did not act."""

    snapshot: Snapshot
    output: object | None = None  # PolicyOutput
    blocked: str | None = None
    error: str | None = None
    observation_age: float = 0.0  # at the start of inference (s)


class PolicyWorker:
    """Runs ``predict`` in its own thread on the newest observation; updates never block.

    ``make_observation(snapshot) -> Observation`` adapts a snapshot to the policy's input,
    ``on_decision(decision)`` receives every result (called from the worker thread), ``clock``
    gives the time stamps are compared with. Each new image triggers at most one decision;
    ``min_period`` caps the decision rate. Joint states are kept for ``state_history`` samples
    and each image is paired with the one nearest its stamp, so the skew the gate checks is the
    real one, not the inference delay.
    """

    def __init__(self, predict: Callable, make_observation: Callable[[Snapshot], object],
                 gate: ObservationGate, on_decision: Callable[[Decision], None],
                 clock: Callable[[], float], min_period: float = 0.0,
                 state_history: int = 256):
        self._predict, self._make_observation = predict, make_observation
        self.gate, self._on_decision, self._clock = gate, on_decision, clock
        self.min_period = min_period
        self._snap = Snapshot()
        # recent joint states: each image is paired with the state nearest its stamp
        self._states: deque[tuple[float, np.ndarray]] = deque(maxlen=state_history)
        self._lock = threading.Lock()
        self._new_image = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # inputs (called from ROS callbacks: constant time, no copies of big arrays)
    def update_image(self, image: np.ndarray, stamp: float, name: str | None = None) -> None:
        """Set the newest image (the main camera unless ``name`` is given)."""
        with self._lock:
            if name is None:
                self._snap.image, self._snap.image_stamp = image, stamp
            else:
                self._snap.extra_images[name] = image
        if name is None:
            self._new_image.set()

    def update_state(self, state: np.ndarray, stamp: float) -> None:
        """Add a proprioceptive state sample (kept for pairing with images by stamp)."""
        with self._lock:
            self._states.append((stamp, state))

    def set_instruction(self, text: str) -> None:
        """Set the instruction the next decisions are conditioned on."""
        with self._lock:
            self._snap.instruction = text

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
            return Snapshot(s.image, s.image_stamp, state, state_stamp, s.instruction,
                            dict(s.extra_images))

    def step(self) -> Decision:
        """One decision on the newest inputs (what the thread runs; callable directly in tests)."""
        snap = self._take()
        now = self._clock()
        reason = self.gate.check(snap, now)
        if reason is not None:
            return Decision(snap, blocked=reason)
        age = now - snap.image_stamp
        try:
            output = self._predict(self._make_observation(snap))
        except Exception as exc:  # a failing model must not kill the node: report it
            return Decision(snap, error=f"{type(exc).__name__}: {exc}", observation_age=age)
        return Decision(snap, output=output, observation_age=age)

    def _run(self) -> None:
        last = -np.inf
        while not self._stop.is_set():
            if not self._new_image.wait(timeout=0.5):
                # no new image: still tell the node (a stopped camera must show up in status)
                snap = self._take()
                reason = self.gate.check(snap, self._clock()) or "no new image for 0.5 s"
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


TINY = "tiny"  # model_path value that builds a random tiny policy (demos and tests)


def load_policy(model_path: str, robot, device: str = "auto", reasoning_every: int = -1):
    """Load a checkpoint directory, or build the random tiny policy for ``model_path='tiny'``.

    The tiny policy is untrained: its chunks are noise around the robot's home pose (scaled to
    +-0.15 rad) so that a demo moves the arm gently inside the safety envelope.
    """
    from roboalign_ros.model import Normalizer, VLAPolicy, build_tiny_policy
    from roboalign_ros.model.tiny import synthetic_chunks

    if not model_path:
        raise ValueError("model_path: empty; give a checkpoint directory (save_pretrained "
                         f"layout) or '{TINY}' for the random demo policy")
    resolved = None if device == "auto" else device
    if model_path == TINY:
        names = list(robot.arm_joints) + ["gripper"]
        policy = build_tiny_policy(action_dim=len(names), state_dim=len(names),
                                   dimension_names=names, horizon=10, dt=0.1,
                                   device=resolved or "cpu")
        center = np.append(robot.home, 0.5).astype(np.float32)
        chunks = center + 0.15 * synthetic_chunks(256, 10, len(names), seed=1)
        policy.normalizer = Normalizer.fit(action=chunks, state=chunks[:, 0])
    else:
        policy = VLAPolicy.from_pretrained(model_path, device=resolved)
    if reasoning_every >= 0:
        policy.config.reasoning_every = reasoning_every
    return policy
