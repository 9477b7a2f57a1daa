"""What a served policy has done, for its status and /diagnostics (no rclpy)."""

from __future__ import annotations

import dataclasses
import time
from collections import deque

import numpy as np


class ServingStats:
    """Counters and recent timings of one configured lifetime of a served policy."""

    def __init__(self) -> None:
        self.reasoning_sequence = 0  # of the newest reasoning published
        self.chunk_reasoning = 0     # reasoning_sequence of the last chunk published
        self.reasoning_times: deque[float] = deque(maxlen=20)
        self.sequence = self.published = self.rejected = self.dropped = 0
        self.latencies: deque[float] = deque(maxlen=100)
        self.publish_times: deque[float] = deque(maxlen=20)
        self.last_age = 0.0

    def conditioned_on(self, decision, mode: str) -> tuple[int, bool]:
        """The reasoning sequence a chunk was conditioned on, and whether it is new to chunks.

        Inline: the newest published when this call used reasoning; async: the reasoning
        worker's result the action path took (0: none).
        """
        out = decision.output
        if mode == "inline":
            conditioned = self.reasoning_sequence if out.generated_text is not None else 0
        else:
            conditioned = decision.reasoning.sequence if decision.reasoning is not None else 0
        new = conditioned != self.chunk_reasoning
        self.chunk_reasoning = conditioned
        return conditioned, new

    def reasoning_done(self, sequence: int, seconds: float) -> None:
        """Count one reasoning out (async mode; inline ones are counted by :func:`outcome`)."""
        self.reasoning_sequence = sequence
        self.reasoning_times.append(seconds)

    def chunk_published(self, latency: float, observation_age: float) -> None:
        """Count one chunk out."""
        self.published += 1
        self.latencies.append(latency)
        self.publish_times.append(time.monotonic())
        self.last_age = observation_age

    def rate(self) -> float:
        """Chunks per second over the recent ones (0 with fewer than two)."""
        t = self.publish_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def status(self) -> dict[str, float | int]:
        """The figures a PolicyStatus carries."""
        return {"observation_age": float(self.last_age),
                "latency": float(self.latencies[-1]) if self.latencies else 0.0,
                "chunk_rate": self.rate(), "chunks_published": self.published,
                "observations_rejected": self.rejected}

    def values(self) -> dict[str, float | int]:
        """The figures /diagnostics reports (latency percentiles in ms once there are any)."""
        values: dict[str, float | int] = {
            "chunks_published": self.published, "observations_rejected": self.rejected,
            "chunks_dropped": self.dropped, "chunk_rate_hz": self.rate(),
            "observation_age_s": float(self.last_age),
            "reasonings_published": self.reasoning_sequence}
        if self.reasoning_times:
            values["reasoning_p50_ms"] = float(np.percentile(self.reasoning_times, 50) * 1e3)
        if self.latencies:
            lat = np.asarray(self.latencies) * 1e3
            values.update(latency_p50_ms=float(np.percentile(lat, 50)),
                          latency_p90_ms=float(np.percentile(lat, 90)))
        return values


@dataclasses.dataclass
class Outcome:
    """What one decision means outside: reasonings to publish first (inline), then a chunk.

    Or the reason there is no chunk (``status``: blocked | error; acting with a chunk).
    """

    status: str
    message: str
    reasonings: list[tuple[int, str, float, str, float]]  # sequence, text, stamp, instr., s
    chunk: dict | None = None     # numpy_to_action_chunk's arguments but the frame


def outcome(stats: ServingStats, decision, mode: str, config) -> Outcome:
    """Count ``decision`` in ``stats`` and say what to publish (the node does the publishing).

    ``config``: the policy's (chunk time step, action space, dimension names).
    """
    reasonings = []

    def inline(out) -> None:   # inline mode: the reasoning this call generated, if any
        if out.reasoning_fresh:
            stats.reasoning_sequence += 1
            reasonings.append((stats.reasoning_sequence, out.reasoning,
                               decision.snapshot.image_stamp, decision.snapshot.instruction,
                               out.timings.get("generate", 0.0)))
            stats.reasoning_times.append(out.timings.get("generate", 0.0))

    if decision.dropped:
        stats.dropped += 1
        if decision.late_output is not None:
            inline(decision.late_output)
    if decision.blocked:
        stats.rejected += decision.snapshot.image is not None
        return Outcome("blocked", decision.blocked, reasonings)
    if decision.error:
        return Outcome("error", f"inference failed: {decision.error}", reasonings)
    out, snap, cfg = decision.output, decision.snapshot, config
    stats.sequence += 1
    latency = out.timings.get("total", 0.0)
    if mode == "inline":
        inline(out)
    conditioned, new = stats.conditioned_on(decision, mode)
    stats.chunk_published(latency, decision.observation_age)
    return Outcome("acting", "; ".join(out.problems) if out.problems else "acting", reasonings,
                   {"actions": out.chunk, "stamp": snap.image_stamp, "dt": cfg.dt,
                    "action_space": cfg.action_space, "dimension_names": cfg.dimension_names,
                    "sequence": stats.sequence, "instruction": snap.instruction,
                    "reasoning": (out.reasoning or "") if new and conditioned else "",
                    "inference_time": latency, "reasoning_sequence": conditioned})


def health(state: str, message: str, lifecycle: str, max_age: float,
           busy: float = 0.0) -> tuple[str, str]:
    """The /diagnostics level (ok, warn, error) and message of a served policy.

    ``state``: its status (acting, error, anything else warns). An inference running (``busy``)
    longer than ``max_age`` is at least a warning: its chunk will be dropped.
    """
    level = {"acting": "ok", "error": "error"}.get(state, "warn")
    if busy > max_age:
        return ("error" if level == "error" else "warn",
                f"{lifecycle}: inference running for {busy:.1f} s > max_image_age "
                f"{max_age:.2f} s (its chunk will be dropped)")
    return level, message
