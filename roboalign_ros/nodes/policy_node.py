"""policy_node: camera + joint states + instruction in, ActionChunks and reasoning out.

Wiring: image / joint-state / instruction callbacks only store the newest sample in a
:class:`~roboalign_ros.policy_runtime.PolicyWorker`; the worker thread runs the action path
(features + head) and this node publishes each chunk stamped with the observation time it
used, a PolicyStatus per decision (with the reason when it refuses to act) and diagnostics.
Reasoning (``reasoning_mode: async``, the default) is generated on its own thread by a
:class:`~roboalign_ros.policy_runtime.ReasoningWorker`, every ``reasoning_period`` seconds and
at once on a new instruction; each chunk is conditioned on the newest finished reasoning
(``ActionChunk.reasoning_sequence``) and never waits for one in progress. ``inline`` generates
inside the action path every ``reasoning_every`` chunks (as ``VLAPolicy.predict`` and the
headless evaluator do); ``action_source: tokens`` models always run inline. Every reasoning is
published as a ``roboalign_ros/Reasoning`` stamped with its observation's time.
With ``attention.enabled``, an :class:`~roboalign_ros.policy_runtime.AttentionWorker` draws
where the policy looks (``model.attention``) on the newest accepted observation every
``attention.period`` seconds and publishes it on ``~/attention/<camera>`` (rgb8, the camera's
stamp and frame), from its own thread and its own copy of the model.
A lifecycle (managed) node: ``configure`` reads the parameters, loads the model, warms it up
and subscribes (status LOADING meanwhile; a bad parameter fails the transition, names the
parameter and leaves the node unconfigured); ``activate`` starts the action (and reasoning)
path and the chunk / reasoning publishers; ``deactivate`` stops them (no chunk while inactive);
``cleanup`` releases the model. ``autostart`` (default true) configures and activates at
startup. Status and /diagnostics name the lifecycle state in every state. Inputs beyond
the ``max_instruction_*`` / ``max_image_*`` bounds are refused before the model sees them, and
the refusal is what the status and /diagnostics report.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from roboalign_ros.conversions import (
    ConversionError,
    JointStateMapper,
    image_to_numpy,
    numpy_to_action_chunk,
    numpy_to_image,
    seconds_to_stamp,
    stamp_to_seconds,
)
from roboalign_ros.msg import ActionChunk, PolicyStatus, Reasoning
from roboalign_ros.nodes.common import (
    COMMAND_QOS,
    ERROR,
    OK,
    WARN,
    Diagnostics,
    Entities,
    autostart,
    declare_parameters,
    lifecycle_state,
    now_seconds,
    parameter_values,
    run_node,
    sensor_qos_for,
)
from roboalign_ros.policy_runtime import (
    JOINT_STATE,
    AttentionWorker,
    Decision,
    GateLimits,
    InputLimits,
    ObservationGate,
    PolicyWorker,
    ReasoningResult,
    ReasoningWorker,
    Snapshot,
    attention_overlays,
    checkpoint_cameras,
    image_problem,
    load_policy,
    min_period,
    preview,
    tokenizer_counter,
)
from roboalign_ros.robot import load_robot_config

_RGB_FROM = {"rgb8": lambda a: a, "bgr8": lambda a: a[..., ::-1],
             "rgba8": lambda a: a[..., :3]}
_LIMITS = ("max_instruction_chars", "max_instruction_tokens", "max_image_width",
           "max_image_height", "max_image_bytes")


class PolicyNode(LifecycleNode):
    """Wires a :class:`~roboalign_ros.model.VLAPolicy` to the ROS graph."""

    def __init__(self, **overrides):
        super().__init__("policy_node", **overrides)
        declare_parameters(self, "policy_node")  # read at configure (ros2 param set works before)
        self.p = parameter_values(self, "policy_node")
        self.policy = self._entities = None
        self.worker: PolicyWorker | None = None
        self.reasoner: ReasoningWorker | None = None
        self.attention: AttentionWorker | None = None
        self._active = False
        # on_decision publishes under it and deactivate clears _active under it: a chunk is
        # either out before the status deactivate sends (and counted in it) or not at all
        self._publishing = threading.Lock()
        self._reset()
        # status and diagnostics in every state (the status topic is read once, here)
        self.status_pub = self.create_publisher(PolicyStatus, self.p["status_topic"], 10)
        self.diagnostics = Diagnostics(self, "policy_node: inference")
        self._set_state(PolicyStatus.STATE_UNCONFIGURED, "not configured", "unconfigured")
        self.create_timer(1.0, self.publish_diagnostics)
        if self.p["autostart"]:
            autostart(self)

    def _reset(self) -> None:
        """The counters and inputs of one configured lifetime."""
        self.reasoning_sequence = 0  # of the newest reasoning published
        self.chunk_reasoning = 0     # reasoning_sequence of the last chunk published
        self.reasoning_times: deque[float] = deque(maxlen=20)
        self.sequence = self.published = self.rejected = self.dropped = 0
        self.latencies: deque[float] = deque(maxlen=100)
        self.publish_times: deque[float] = deque(maxlen=20)
        self.last_age = 0.0
        self._pending_instruction = ""
        self.mode = "unconfigured"
        self.frame_ids: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Parameters -> gate, limits, topics; load the model and warm it up."""
        self._entities = Entities(self)
        self.p = p = parameter_values(self, "policy_node")
        self._set_state(PolicyStatus.STATE_LOADING, f"loading {p['model_path']}")
        try:
            self._configure(p)
        except Exception as exc:  # a bad parameter or model: say which, stay unconfigured
            self._release()
            self._set_state(PolicyStatus.STATE_ERROR, f"configure failed: {exc}",
                            "unconfigured")
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._set_state(PolicyStatus.STATE_BLOCKED, "model ready, not acting (activate to "
                        "publish chunks)", "inactive")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self, p) -> None:
        self.robot = load_robot_config(p["robot"])
        self.gate = ObservationGate(GateLimits(p["max_image_age"], p["max_state_skew"],
                                               max_camera_skew=p["max_camera_skew"]))
        self.cameras, topics = self._camera_topics(p)
        self.limits = InputLimits(**{name: p[name] for name in _LIMITS})
        self.state_of = JointStateMapper(self.robot)
        self.chunk_pub = self.create_lifecycle_publisher(ActionChunk, p["chunk_topic"], 10)
        self.reasoning_pub = self.create_lifecycle_publisher(Reasoning, p["reasoning_topic"], 10)
        self._load(p)
        if p["attention.enabled"]:
            self._attention_path(p)
        for cam, topic in zip(self.cameras, topics):
            self.create_subscription(Image, topic, lambda m, c=cam: self.on_image(m, c),
                                     sensor_qos_for(p["sensor_reliability"], 2))
        self.create_subscription(JointState, self.robot.topics["joint_states"],
                                 self.on_joint_state,
                                 sensor_qos_for(p["sensor_reliability"], 50))
        self.create_subscription(String, p["instruction_topic"], self.on_instruction,
                                 COMMAND_QOS)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the action (and reasoning) path: chunks are published from now on."""
        result = super().on_activate(state)  # enables the chunk and reasoning publishers
        self._active = True
        for background in (self.reasoner, self.attention):
            if background is not None:
                background.start()
        self.worker.start()
        self.get_logger().info("active: publishing chunks")
        self._set_state(PolicyStatus.STATE_WAITING, "model ready", "active")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop publishing chunks (an inference in progress is dropped) and the threads."""
        with self._publishing:
            self._active = False
        result = super().on_deactivate(state)
        self._stop_workers()
        self.get_logger().info("inactive: no chunks until activated")
        self._set_state(PolicyStatus.STATE_BLOCKED, "not acting (activate to publish chunks)",
                        "inactive")
        return result

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Release the model, the workers and the topics: back to unconfigured."""
        self._release()
        self._set_state(PolicyStatus.STATE_UNCONFIGURED, "not configured", "unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop and release everything."""
        self._active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """A transition raised: release everything and go back to unconfigured."""
        self.get_logger().error(f"transition from {state.label} failed: releasing the model")
        self.on_shutdown(state)
        self._set_state(PolicyStatus.STATE_ERROR, f"transition from {state.label} failed",
                        "unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def _stop_workers(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for background in (self.reasoner, self.attention):
            if background is not None:
                background.stop()

    def _release(self) -> None:
        self._stop_workers()
        if self._entities is not None:
            self._entities.destroy()
        device = getattr(self.policy, "device", None)
        self.policy = self.worker = self.reasoner = self.attention = self._entities = None
        self._reset()
        if getattr(device, "type", "") == "cuda":  # give the GPU memory back now
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def _camera_topics(self, p) -> tuple[tuple[str, ...], list[str]]:
        """The cameras to subscribe (the parameter, else the checkpoint's) and their topics."""
        cameras = list(p["cameras"]) or checkpoint_cameras(p["model_path"])
        topics = list(p["camera_topics"]) or [""] * len(cameras)
        if len(topics) != len(cameras) or len(set(cameras)) != len(cameras):
            raise ValueError(f"camera_topics: {len(topics)} topics for cameras {cameras} "
                             "(one per camera, distinct names)")
        defaults = [self.robot.color_topic] + [f"/camera/{c}/color/image_raw"
                                               for c in cameras[1:]]
        return tuple(cameras), [t or d for t, d in zip(topics, defaults)]

    def _load(self, p) -> None:
        """Load the model, check it, warm it up, build the workers (started by activate)."""
        t0 = time.perf_counter()
        if p["torch_threads"] > 0:
            import torch

            torch.set_num_threads(p["torch_threads"])
        try:
            self.policy = load_policy(p["model_path"], self.robot, p["device"],
                                      p["reasoning_every"])
        except Exception as exc:
            raise ValueError(f"model_path: {p['model_path']!r}: model failed to load: "
                             f"{exc}") from exc
        cfg = self.policy.config
        expected = list(self.robot.arm_joints) + ["gripper"]
        if cfg.action_space == "joint_position" and list(cfg.dimension_names) != expected:
            raise ValueError(f"model_path: model dimension_names {cfg.dimension_names} do not "
                             f"match robot {self.robot.name}: {expected}")
        if set(cfg.camera_names) != set(self.cameras):
            raise ValueError(f"cameras {list(self.cameras)} do not match the model's "
                             f"camera_names {list(cfg.camera_names)}")
        self._warm_up()
        self.gate.needs_state = bool(cfg.state_dim)  # a model without proprioception
        self.mode = self._reasoning_mode()
        predict = self.policy.predict
        if self.mode == "async":
            self.reasoner = ReasoningWorker(self.policy.reason, self._observation,
                                            self.on_reasoning, p["reasoning_period"])
            predict = self.policy.act
        self.worker = PolicyWorker(predict, self._observation, self.gate,
                                   self.on_decision, lambda: now_seconds(self),
                                   min_period(p["max_rate"]),
                                   limits=self.limits,
                                   count_tokens=tokenizer_counter(self.policy.tokenizer),
                                   reasoner=self.reasoner, cameras=self.cameras)
        when = {"off": "off", "inline": f"inline every {cfg.reasoning_every} chunks",
                "async": f"on its own thread every {p['reasoning_period']} s"}[self.mode]
        self.get_logger().info(
            f"policy ready in {time.perf_counter() - t0:.1f} s on {self.policy.device}: "
            f"{cfg.action_space} chunks {cfg.horizon}x{cfg.action_dim} @ dt {cfg.dt} s, "
            f"reasoning {when} (inactive until activated)")

    def _attention_path(self, p) -> None:
        """The attention overlays: an eager-attention copy of the model on its own thread."""
        from roboalign_ros.model.attention import AttentionExplainer

        explainer = AttentionExplainer(self.policy)
        self.attention_pubs = {
            cam: self.create_lifecycle_publisher(Image, f"~/attention/{cam}", 1)
            for cam in self.policy.config.camera_names}

        latest = self.reasoner.latest_text if self.reasoner is not None else lambda _: None
        self.attention = AttentionWorker(
            attention_overlays(explainer, latest, p["attention.source"]), self._observation,
            self.on_attention, p["attention.period"])
        self.worker.observers.append(self.attention)

    def on_attention(self, result) -> None:
        """Publish the overlays of one attention map (called from the attention thread)."""
        if result.error:
            self.get_logger().error(f"attention failed: {result.error}",
                                    throttle_duration_sec=5.0)
            return
        if not self._active:
            return
        for cam, overlay in result.value.items():
            msg = numpy_to_image(overlay, "rgb8", stamp=result.stamp,
                                 frame_id=self.frame_ids.get(cam, ""))
            self.attention_pubs[cam].publish(msg)

    def _warm_up(self) -> None:
        """One action-path call on blank inputs, so that the first real chunk is not slow."""
        try:
            self.policy.warmup(calls=1, reasoning=False)
        except Exception as exc:
            raise RuntimeError(f"model_path: warm-up inference failed: {exc}") from exc

    def _reasoning_mode(self) -> str:
        """The reasoning mode (off, inline or async), from the parameters and the checkpoint."""
        cfg = self.policy.config
        if cfg.action_source == "tokens":
            return "inline"  # the actions are the generation's: its rate is the chunk rate
        if not cfg.reasoning_every:
            return "off"
        return self.p["reasoning_mode"]

    # ------------------------------------------------------------------ inputs (never block)

    def on_image(self, msg: Image, camera: str) -> None:
        """Keep a camera's newest image as a zero-copy view (RGB); refuse it by its header."""
        if self.worker is None:
            return
        problem = image_problem(msg.width, msg.height, msg.encoding, len(msg.data), self.limits)
        if problem is None:
            try:
                image = _RGB_FROM[msg.encoding](image_to_numpy(msg))
            except ConversionError as exc:
                problem = f"image refused: {exc}"
        if problem is not None:
            self.rejected += 1
            self.get_logger().error(problem, throttle_duration_sec=2.0)
            self.worker.refuse_image(camera, f"camera {camera!r}: {problem}"
                                     if camera != self.cameras[0] else problem)
            return
        self.frame_ids[camera] = msg.header.frame_id   # the overlays' frame
        self.worker.update_image(image, stamp_to_seconds(msg.header.stamp), camera)

    def on_joint_state(self, msg: JointState) -> None:
        """Keep the newest proprioceptive state (arm joints + gripper opening)."""
        if self.worker is None:
            return
        try:
            state = self.state_of(msg)
        except ConversionError as exc:
            problem = f"joint state refused: {exc}"
            self.get_logger().error(problem, throttle_duration_sec=2.0)
            self.worker.refuse(JOINT_STATE, problem)
            return
        self.worker.update_state(state, stamp_to_seconds(msg.header.stamp))

    def on_instruction(self, msg: String) -> None:
        """Switch task; reasoning is regenerated for the new instruction."""
        if msg.data == self._pending_instruction:
            return  # republished (the sim repeats it for late joiners)
        self.get_logger().info(f"instruction: '{preview(msg.data)}'")
        self._pending_instruction = msg.data
        if self.worker is not None:
            self._instruct(msg.data)

    def _instruct(self, text: str) -> None:
        problem = self.worker.set_instruction(text)
        if problem:
            self.get_logger().error(problem)

    def _observation(self, snap: Snapshot):
        from roboalign_ros.model import Observation

        images = {name: np.ascontiguousarray(img) for name, img in snap.images.items()}
        return Observation(images=images, state=snap.state, instruction=snap.instruction)

    # ------------------------------------------------------------------ outputs

    def _publish_reasoning(self, sequence: int, text: str, stamp: float, instruction: str,
                           seconds: float) -> None:
        """One new reasoning on the reasoning topic (chunks name it by ``sequence``)."""
        self.reasoning_sequence = sequence
        msg = Reasoning(sequence=sequence, instruction=instruction, text=text or "")
        seconds_to_stamp(stamp, msg.header.stamp)
        msg.header.frame_id = self.robot.base_frame
        msg.generation_time.sec = int(seconds)
        msg.generation_time.nanosec = int((seconds - int(seconds)) * 1e9)
        self.reasoning_pub.publish(msg)
        self.reasoning_times.append(seconds)

    def _publish_inline_reasoning(self, decision: Decision, out) -> None:
        """Inline mode: the reasoning of ``out`` if this call generated it."""
        if out.reasoning_fresh:
            self._publish_reasoning(self.reasoning_sequence + 1, out.reasoning,
                                    decision.snapshot.image_stamp,
                                    decision.snapshot.instruction,
                                    out.timings.get("generate", 0.0))

    def on_reasoning(self, result: ReasoningResult) -> None:
        """Async mode: publish each finished reasoning (called from the reasoning thread)."""
        if result.error:
            self.get_logger().error(f"reasoning failed: {result.error}",
                                    throttle_duration_sec=2.0)
            return
        self._publish_reasoning(result.sequence, result.reasoning.reasoning, result.stamp,
                                result.instruction, result.seconds)

    def on_decision(self, decision: Decision) -> None:
        """Publish a chunk (+ reasoning) or say why the policy did not act."""
        with self._publishing:
            if self._active:  # else deactivated while this inference ran: nothing goes out
                self._publish_decision(decision)

    def _publish_decision(self, decision: Decision) -> None:
        if decision.dropped:
            self.dropped += 1
            self.get_logger().warning(decision.blocked, throttle_duration_sec=2.0)
            if decision.late_output is not None:
                self._publish_inline_reasoning(decision, decision.late_output)
        if decision.blocked:
            self.rejected += decision.snapshot.image is not None
            self._set_state(PolicyStatus.STATE_BLOCKED, decision.blocked)
            return
        if decision.error:
            self._set_state(PolicyStatus.STATE_ERROR, f"inference failed: {decision.error}")
            self.get_logger().error(f"inference failed: {decision.error}",
                                    throttle_duration_sec=2.0)
            return
        out, snap, cfg = decision.output, decision.snapshot, self.policy.config
        self.sequence += 1
        latency = out.timings.get("total", 0.0)
        if self.mode == "inline":
            self._publish_inline_reasoning(decision, out)
            conditioned = self.reasoning_sequence if out.generated_text is not None else 0
        else:  # async: the reasoning worker's result the chunk was conditioned on
            conditioned = decision.reasoning.sequence if decision.reasoning is not None else 0
        new = conditioned != self.chunk_reasoning
        self.chunk_reasoning = conditioned
        msg = numpy_to_action_chunk(
            out.chunk, stamp=snap.image_stamp, dt=cfg.dt, action_space=cfg.action_space,
            dimension_names=cfg.dimension_names, sequence=self.sequence,
            instruction=snap.instruction,
            reasoning=(out.reasoning or "") if new and conditioned else "",
            inference_time=latency, frame_id=self.robot.base_frame,
            reasoning_sequence=conditioned)
        self.chunk_pub.publish(msg)
        self.published += 1
        self.latencies.append(latency)
        self.publish_times.append(time.monotonic())
        self.last_age = decision.observation_age
        self._set_state(PolicyStatus.STATE_ACTING,
                        "; ".join(out.problems) if out.problems else "acting")

    def _rate(self) -> float:
        t = self.publish_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def _set_state(self, state: int, message: str, lifecycle: str | None = None) -> None:
        """Publish a PolicyStatus; its message starts with the lifecycle state ("active: ...").

        ``lifecycle``: the state being entered (during a transition); default the current one.
        """
        self.lifecycle = lifecycle or lifecycle_state(self)
        self.state, self._text = state, message
        self.message = f"{self.lifecycle}: {message}"
        status = PolicyStatus(state=state, message=self.message,
                              lifecycle_state=self.lifecycle, model=self.p["model_path"],
                              device=str(getattr(self.policy, "device", self.p["device"])),
                              instruction=preview(self._pending_instruction, 200),
                              observation_age=float(self.last_age),
                              latency=float(self.latencies[-1]) if self.latencies else 0.0,
                              chunk_rate=self._rate(), chunks_published=self.published,
                              observations_rejected=self.rejected)
        seconds_to_stamp(now_seconds(self), status.header.stamp)
        self.status_pub.publish(status)

    def publish_diagnostics(self) -> None:
        """Lifecycle state, latency, observation age and chunk rate on /diagnostics.

        When not active the status goes out again too: no decision publishes one then.
        """
        if not self._active:
            self._set_state(self.state, self._text)
        lat = np.asarray(self.latencies) * 1e3
        busy = self.worker.busy_for() if self.worker is not None else 0.0
        values = {"lifecycle_state": self.lifecycle, "state": self.state,
                  "message": self.message,
                  "chunks_published": self.published, "observations_rejected": self.rejected,
                  "chunks_dropped": self.dropped, "inference_running_s": busy,
                  "chunk_rate_hz": self._rate(), "observation_age_s": float(self.last_age),
                  "reasoning_mode": self.mode,
                  "reasonings_published": self.reasoning_sequence,
                  "reasoning_running_s": self.reasoner.busy_for() if self.reasoner else 0.0}
        if self.reasoning_times:
            values["reasoning_p50_ms"] = float(np.percentile(self.reasoning_times, 50) * 1e3)
        if lat.size:
            values.update(latency_p50_ms=float(np.percentile(lat, 50)),
                          latency_p90_ms=float(np.percentile(lat, 90)))
        level = {PolicyStatus.STATE_ACTING: OK, PolicyStatus.STATE_ERROR: ERROR}.get(
            self.state, WARN)
        message = self.message
        if self.worker is not None and busy > self.gate.limits.max_image_age:  # stuck
            level = max(level, WARN)
            message = (f"{self.lifecycle}: inference running for {busy:.1f} s > max_image_age "
                       f"{self.gate.limits.max_image_age:.2f} s (its chunk will be dropped)")
        self.diagnostics.publish(level, message, values)

    def close(self) -> None:
        """Stop the worker threads."""
        self._active = False
        self._stop_workers()


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros policy_node``."""
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
