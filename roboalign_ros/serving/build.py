"""The policy as policy_node serves it: parameters -> a loaded, checked model and its workers.

One construction for policy_node, the headless evaluator and any future server (as
:mod:`roboalign_ros.control.build` is for the executor), so all of them run the same gate, the
same input bounds and the same model checks from policy_node's parameters
(``config/parameters/policy_node.yaml``).

    p = node_parameters("policy_node", "policy.yaml")
    service = build_service(p, robot, clock=time.monotonic, on_decision=print)
    service.start()
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .gate import (
    JOINT_STATE,
    GateLimits,
    InputLimits,
    ObservationGate,
    Snapshot,
    image_problem,
    min_period,
    tokenizer_counter,
)
from .loading import checkpoint_cameras, load_policy
from .workers import AttentionWorker, PolicyWorker, ReasoningWorker

LIMITS = ("max_instruction_chars", "max_instruction_tokens", "max_image_width",
          "max_image_height", "max_image_bytes")


def input_limits(p: Mapping[str, Any]) -> InputLimits:
    """The bounds on what the model is ever run on (``max_instruction_*``, ``max_image_*``)."""
    return InputLimits(**{name: p[name] for name in LIMITS})


def observation_gate(p: Mapping[str, Any], needs_state: bool = True) -> ObservationGate:
    """The gate: image age, image vs joint-state skew, camera vs camera skew."""
    return ObservationGate(GateLimits(p["max_image_age"], p["max_state_skew"],
                                      max_camera_skew=p["max_camera_skew"]),
                           needs_state=needs_state)


def camera_topics(p: Mapping[str, Any], robot) -> tuple[tuple[str, ...], list[str]]:
    """The cameras to subscribe (the parameter, else the checkpoint's) and their topics.

    A topic left empty: the first camera's is the robot config's colour topic, camera C's is
    ``/camera/C/color/image_raw``.
    """
    cameras = list(p["cameras"]) or checkpoint_cameras(p["model_path"])
    topics = list(p["camera_topics"]) or [""] * len(cameras)
    if len(topics) != len(cameras) or len(set(cameras)) != len(cameras):
        raise ValueError(f"camera_topics: {len(topics)} topics for cameras {cameras} "
                         "(one per camera, distinct names)")
    defaults = [robot.color_topic] + [f"/camera/{c}/color/image_raw" for c in cameras[1:]]
    return tuple(cameras), [t or d for t, d in zip(topics, defaults)]


def check_policy(policy, robot, cameras: tuple[str, ...] | None = None) -> None:
    """Refuse a model that does not fit the robot (joint names) or the cameras given."""
    cfg = policy.config
    expected = list(robot.arm_joints) + ["gripper"]
    if cfg.action_space == "joint_position" and list(cfg.dimension_names) != expected:
        raise ValueError(f"model_path: model dimension_names {list(cfg.dimension_names)} do "
                         f"not match robot {robot.name}: {expected}")
    if cameras is not None and set(cfg.camera_names) != set(cameras):
        raise ValueError(f"cameras {list(cameras)} do not match the model's camera_names "
                         f"{list(cfg.camera_names)}")


def load_checked(p: Mapping[str, Any], robot, cameras: tuple[str, ...] | None = None):
    """Load ``model_path`` on ``device`` (``torch_threads``), check it, warm it up.

    ``inference: remote``: the model ``roboalign serve`` serves at ``server`` instead
    (:class:`~.remote.RemotePolicy`), checked and warmed up the same way.
    """
    if p["inference"] == "remote":
        policy = connect_remote(p)
    else:
        if p["torch_threads"] > 0:
            import torch

            torch.set_num_threads(p["torch_threads"])
        try:
            policy = load_policy(p["model_path"], robot, p["device"], p["reasoning_every"])
        except Exception as exc:
            raise ValueError(f"model_path: {p['model_path']!r}: model failed to load: "
                             f"{exc}") from exc
    check_policy(policy, robot, cameras)
    try:  # one action-path call on blank inputs, so that the first real chunk is not slow
        policy.warmup(calls=1, reasoning=False)
    except Exception as exc:
        raise RuntimeError(f"model_path: warm-up inference failed: {exc}") from exc
    return policy


def connect_remote(p: Mapping[str, Any]):
    """The served policy at ``server`` (policy_node's remote parameters)."""
    from .remote import RemotePolicy, read_token, tls_context

    if not p["server"]:
        raise ValueError("server: inference remote needs the server's HOST:PORT")
    token = read_token(p["token_file"]) if p["token_file"] else None
    context = tls_context(p["tls.cert"] or None, p["tls.key"] or None, p["tls.ca"] or None,
                          server=False)
    return RemotePolicy(p["server"], token=token, timeout=p["remote_timeout"],
                        ssl_context=context)


def reasoning_mode(policy, requested: str) -> str:
    """off, inline or async: ``reasoning_mode`` as the checkpoint allows it."""
    cfg = policy.config
    if cfg.action_source == "tokens":
        return "inline"  # the actions are the generation's: its rate is the chunk rate
    return requested if cfg.reasoning_every else "off"


def observation(snap: Snapshot):
    """A gated snapshot as the model's :class:`~roboalign_ros.model.Observation`."""
    from roboalign_ros.model import Observation

    images = {name: np.ascontiguousarray(img) for name, img in snap.images.items()}
    return Observation(images=images, state=snap.state, instruction=snap.instruction)


@dataclasses.dataclass
class PolicyService:
    """A loaded policy and the threads that serve it (started by :meth:`start`)."""

    policy: Any
    cameras: tuple[str, ...]
    gate: ObservationGate
    limits: InputLimits
    mode: str                                  # reasoning: off | inline | async
    worker: PolicyWorker
    reasoner: ReasoningWorker | None = None
    attention: AttentionWorker | None = None
    load_seconds: float = 0.0

    def start(self) -> None:
        """Start the reasoning and attention threads, then the action path."""
        for background in (self.reasoner, self.attention):
            if background is not None:
                background.start()
        self.worker.start()

    def stop(self) -> None:
        """Stop every thread (an inference in progress is dropped)."""
        self.worker.stop()
        for background in (self.reasoner, self.attention):
            if background is not None:
                background.stop()

    def offer_image(self, camera: str, width: int, height: int, encoding: str, nbytes: int,
                    stamp: float, decode: Callable[[], np.ndarray]) -> str | None:
        """A camera's newest frame for the action path, checked by its header first.

        ``decode`` makes the (H, W, 3) RGB array only once the header is within the input
        bounds. Returns the reason it was refused (the gate blocks on it too), else None.
        """
        problem = image_problem(width, height, encoding, nbytes, self.limits)
        if problem is None:
            try:
                image = decode()
            except ValueError as exc:
                problem = f"image refused: {exc}"
        if problem is not None:
            self.worker.refuse_image(camera, problem if camera == self.cameras[0]
                                     else f"camera {camera!r}: {problem}")
            return problem
        self.worker.update_image(image, stamp, camera)
        return None

    def offer_state(self, stamp: float, decode: Callable[[], np.ndarray]) -> str | None:
        """The newest joint state; returns the reason it was refused, else None."""
        try:
            state = decode()
        except ValueError as exc:
            self.worker.refuse(JOINT_STATE, f"joint state refused: {exc}")
            return f"joint state refused: {exc}"
        self.worker.update_state(state, stamp)
        return None

    def release(self) -> None:
        """Stop the threads and give the GPU memory back (when the model was on one)."""
        self.stop()
        device = getattr(self.policy, "device", None)
        self.policy = None
        if getattr(device, "type", "") == "cuda":
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def diagnostics(self) -> dict[str, Any]:
        """The threads' figures for /diagnostics: reasoning mode, how long each is busy."""
        return {"reasoning_mode": self.mode, "inference_running_s": self.worker.busy_for(),
                "reasoning_running_s": self.reasoner.busy_for() if self.reasoner else 0.0}

    def describe(self, p: Mapping[str, Any]) -> str:
        """One line for the log: device, chunk shape, reasoning."""
        cfg = self.policy.config
        when = {"off": "off", "inline": f"inline every {cfg.reasoning_every} chunks",
                "async": f"on its own thread every {p['reasoning_period']} s"}[self.mode]
        return (f"policy ready in {self.load_seconds:.1f} s on {self.policy.device}: "
                f"{cfg.action_space} chunks {cfg.horizon}x{cfg.action_dim} @ dt {cfg.dt} s, "
                f"reasoning {when}")


def build_service(p: Mapping[str, Any], robot, *, clock: Callable[[], float],
                  on_decision: Callable, on_reasoning: Callable | None = None,
                  on_attention: Callable | None = None,
                  cameras: tuple[str, ...] | None = None) -> PolicyService:
    """The policy policy_node serves for parameters ``p`` (policy_node's), on ``robot``.

    ``on_decision`` / ``on_reasoning`` / ``on_attention`` are called from the worker threads
    with each :class:`~.workers.Decision`, reasoning and attention result; ``clock`` gives the
    time the observations are stamped in. ``cameras``: default from ``p`` (see
    :func:`camera_topics`).
    """
    t0 = time.perf_counter()
    if cameras is None:
        cameras, _ = camera_topics(p, robot)
    limits = input_limits(p)
    policy = load_checked(p, robot, cameras)
    gate = observation_gate(p, needs_state=bool(policy.config.state_dim))
    mode = reasoning_mode(policy, p["reasoning_mode"])
    reasoner, predict = None, policy.predict
    if mode == "async":
        reasoner = ReasoningWorker(policy.reason, observation, on_reasoning,
                                   p["reasoning_period"])
        predict = policy.act
    worker = PolicyWorker(predict, observation, gate, on_decision, clock,
                          min_period(p["max_rate"]), limits=limits,
                          count_tokens=tokenizer_counter(policy.tokenizer)
                          if policy.tokenizer is not None else None,   # remote: the server's
                          reasoner=reasoner,
                          cameras=cameras)
    attention = None
    if p["attention.enabled"]:   # an eager-attention copy of the model on its own thread
        from roboalign_ros.model.attention import AttentionExplainer

        from .workers import attention_overlays

        latest = reasoner.latest_text if reasoner is not None else lambda _: None
        attention = AttentionWorker(
            attention_overlays(AttentionExplainer(policy), latest, p["attention.source"]),
            observation, on_attention, p["attention.period"])
        worker.observers.append(attention)
    return PolicyService(policy, tuple(cameras), gate, limits, mode, worker, reasoner,
                         attention, time.perf_counter() - t0)
