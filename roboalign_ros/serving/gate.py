"""What a served policy may act on: input bounds and the observation gate (no rclpy).

:class:`ObservationGate` decides whether an observation may be acted on at all: a stale image,
an image/joint-state skew beyond the limit or a missing instruction blocks the policy, with the
reason in plain words.

:class:`InputLimits` bound what the model is ever run on: inference time grows with the
instruction's length (a 100 kB instruction held a CPU core for minutes) and with the image size,
so oversized inputs are refused before they reach the model, and the refusal (not a downstream
symptom such as a stale image) is the reason the gate gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from roboalign_ros.parameters import default


@dataclass(frozen=True)
class GateLimits:
    """When an observation is too old or inconsistent to act on (seconds)."""

    max_image_age: float = default("policy_node", "max_image_age")
    max_state_skew: float = default("policy_node", "max_state_skew")
    require_instruction: bool = True
    max_camera_skew: float = default("policy_node", "max_camera_skew")

    def __post_init__(self):
        if not self.max_image_age > 0 or not self.max_state_skew > 0 \
                or not self.max_camera_skew > 0:
            raise ValueError("max_image_age / max_state_skew / max_camera_skew: must be > 0")


@dataclass(frozen=True)
class InputLimits:
    """The largest inputs the policy is run on (defaults fit a 1920x1080 RealSense stream)."""

    max_instruction_chars: int = default("policy_node", "max_instruction_chars")
    max_instruction_tokens: int = default("policy_node", "max_instruction_tokens")
    max_image_width: int = default("policy_node", "max_image_width")
    max_image_height: int = default("policy_node", "max_image_height")
    max_image_bytes: int = 1920 * 1080 * 4  # rgba8 at full size

    def __post_init__(self):
        for name in ("max_instruction_chars", "max_instruction_tokens", "max_image_width",
                     "max_image_height", "max_image_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")


COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8")
INSTRUCTION, IMAGE, JOINT_STATE = "instruction", "image", "joint state"  # refusal kinds


def image_kind(camera: str | None) -> str:
    """The refusal kind of a camera's images (IMAGE for the first camera)."""
    return IMAGE if camera is None else f"{IMAGE} {camera}"


def preview(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for logs and status (with the full length)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def instruction_problem(text: str, limits: InputLimits,
                        count_tokens: Callable[[str], int] | None = None) -> str | None:
    """Why the policy refuses ``text`` as an instruction, or None.

    Characters are checked first, so the tokenizer only ever sees a bounded text.
    """
    if len(text) > limits.max_instruction_chars:
        return (f"instruction refused: {len(text)} characters > max_instruction_chars "
                f"{limits.max_instruction_chars}")
    if count_tokens is not None and text:
        tokens = count_tokens(text)
        if tokens > limits.max_instruction_tokens:
            return (f"instruction refused: {tokens} tokens > max_instruction_tokens "
                    f"{limits.max_instruction_tokens}")
    return None


def image_problem(width: int, height: int, encoding: str, nbytes: int,
                  limits: InputLimits) -> str | None:
    """Why the policy refuses an image by its header (before it is converted), or None."""
    if encoding not in COLOUR_ENCODINGS:
        return (f"image refused: encoding {encoding!r} not supported (the policy needs "
                f"{'/'.join(COLOUR_ENCODINGS)})")
    if width > limits.max_image_width or height > limits.max_image_height:
        return (f"image refused: {width}x{height} exceeds max_image_width x max_image_height "
                f"{limits.max_image_width}x{limits.max_image_height}")
    if nbytes > limits.max_image_bytes:
        return f"image refused: {nbytes} bytes > max_image_bytes {limits.max_image_bytes}"
    return None


def min_period(max_rate: float) -> float:
    """Seconds between decisions under a ``max_rate`` cap in Hz (0: none); ValueError if < 0."""
    if not max_rate >= 0:
        raise ValueError(f"max_rate: must be >= 0 Hz (0: as fast as the model goes), got "
                         f"{max_rate}")
    return 1.0 / max_rate if max_rate > 0 else 0.0


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """Count an instruction's tokens with the policy's own tokenizer."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Snapshot:
    """The newest inputs, as copied for one decision.

    ``image`` / ``image_stamp``: the first camera's newest frame (its stamp is the
    observation's). ``images`` / ``image_stamps``: every other camera's frame nearest that
    stamp. ``refused`` maps an input kind to the reason its newest sample was refused (cleared
    by the next good sample); the gate blocks on it before looking at what is stored.
    """

    image: np.ndarray | None = None
    image_stamp: float | None = None
    state: np.ndarray | None = None
    state_stamp: float | None = None
    instruction: str = ""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    image_stamps: dict[str, float] = field(default_factory=dict)
    cameras: tuple[str, ...] = ()  # every camera the policy needs, the first one first


class ObservationGate:
    """Refuses stale or inconsistent observations, saying why."""

    def __init__(self, limits: GateLimits, needs_state: bool = True):
        self.limits, self.needs_state = limits, needs_state

    def check(self, snap: Snapshot, now: float) -> str | None:
        """Return None when ``snap`` may be acted on at ``now``, else the reason it may not."""
        lim = self.limits
        if INSTRUCTION in snap.refused:
            return snap.refused[INSTRUCTION]
        if lim.require_instruction and not snap.instruction.strip():
            return "no instruction yet (publish one on the instruction topic)"
        if IMAGE in snap.refused:
            return snap.refused[IMAGE]
        if snap.image is None:
            return "no image yet"
        age = now - snap.image_stamp
        if age > lim.max_image_age:
            return f"image {age:.2f} s old > max_image_age {lim.max_image_age:.2f} s"
        if age < -lim.max_state_skew:
            return f"image stamped {-age:.2f} s in the future (clock mismatch?)"
        first = snap.cameras[0] if snap.cameras else "first camera"
        for cam in snap.cameras[1:]:
            if image_kind(cam) in snap.refused:
                return snap.refused[image_kind(cam)]
            stamp = snap.image_stamps.get(cam)
            if stamp is None:
                return f"no image yet from camera {cam!r}"
            if now - stamp > lim.max_image_age:
                return (f"camera {cam!r}: image {now - stamp:.2f} s old > max_image_age "
                        f"{lim.max_image_age:.2f} s")
            skew = abs(stamp - snap.image_stamp)
            if skew > lim.max_camera_skew:
                return (f"camera {cam!r} out of sync with {first!r}: {skew:.3f} s > "
                        f"max_camera_skew {lim.max_camera_skew:.3f} s")
        if self.needs_state:
            if JOINT_STATE in snap.refused:
                return snap.refused[JOINT_STATE]
            if snap.state is None:
                return "no joint state yet"
            skew = abs(snap.image_stamp - snap.state_stamp)
            if skew > lim.max_state_skew:
                return (f"image/joint-state skew {skew:.3f} s > max_state_skew "
                        f"{lim.max_state_skew:.3f} s")
        return None
