"""policy_node: camera + joint states + instruction in, ActionChunks and reasoning out.

The policy, its gate, bounds and threads are :mod:`roboalign_ros.serving`'s (as the headless
evaluator's); this node wires them to topics. A lifecycle node: ``configure`` loads and warms
up the model (a bad parameter fails it, named), ``activate`` publishes, ``deactivate`` stops,
``cleanup`` releases. Parameters: config/parameters/policy_node.yaml.
"""

from __future__ import annotations

import threading

from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from roboalign_ros import conversions as conv
from roboalign_ros import serving
from roboalign_ros.msg import ActionChunk, PolicyStatus, Reasoning
from roboalign_ros.nodes import common
from roboalign_ros.robot import load_robot_config

_LEVELS = {"ok": common.OK, "warn": common.WARN, "error": common.ERROR}


class PolicyNode(LifecycleNode):
    """Wires a :class:`~roboalign_ros.serving.PolicyService` to the ROS graph."""

    def __init__(self, **overrides):
        super().__init__("policy_node", **overrides)
        self.p = common.declare_parameters(self, "policy_node", check=False)  # at configure
        self.service: serving.PolicyService | None = None
        self._entities, self._active, self._pending_instruction = None, False, ""
        # on_decision publishes under it and deactivate clears _active under it: a chunk is
        # either out before the status deactivate sends (and counted in it) or not at all
        self._publishing = threading.Lock()
        self.stats, self.frame_ids = serving.ServingStats(), {}
        self.status_pub = self.create_publisher(PolicyStatus, self.p["status_topic"], 10)
        self.diagnostics = common.Diagnostics(self, "policy_node: inference")
        self._set_state(PolicyStatus.STATE_UNCONFIGURED, "not configured", "unconfigured")
        self.create_timer(1.0, self.publish_diagnostics)
        if self.p["autostart"]:
            common.autostart(self)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Parameters -> the served policy (loaded, checked, warmed up) and its topics."""
        self._entities = common.Entities(self)
        try:
            self.p = p = common.parameter_values(self, "policy_node")
            self._set_state(PolicyStatus.STATE_LOADING, f"loading {p['model_path']}")
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
        cameras, topics = serving.camera_topics(p, self.robot)
        self.state_of = conv.JointStateMapper(self.robot)
        self.chunk_pub = self.create_lifecycle_publisher(ActionChunk, p["chunk_topic"], 10)
        self.reasoning_pub = self.create_lifecycle_publisher(Reasoning, p["reasoning_topic"], 10)
        self.attention_pubs = {c: self.create_lifecycle_publisher(Image, f"~/attention/{c}", 1)
                               for c in cameras} if p["attention.enabled"] else {}
        self.service = serving.build_service(
            p, self.robot, clock=lambda: common.now_seconds(self), on_decision=self.on_decision,
            on_reasoning=self.on_reasoning, on_attention=self.on_attention, cameras=cameras)
        for cam, topic in zip(cameras, topics):
            self.create_subscription(Image, topic, lambda m, c=cam: self.on_image(m, c),
                                     common.sensor_qos_for(p["sensor_reliability"], 2))
        self.create_subscription(JointState, self.robot.topics["joint_states"],
                                 self.on_joint_state,
                                 common.sensor_qos_for(p["sensor_reliability"], 50))
        self.create_subscription(String, p["instruction_topic"], self.on_instruction,
                                 common.COMMAND_QOS)
        self.get_logger().info(f"{self.service.describe(p)} (inactive until activated)")

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the action (and reasoning) path: chunks are published from now on."""
        result = super().on_activate(state)  # enables the chunk and reasoning publishers
        self._active = True
        self.service.start()
        self.get_logger().info("active: publishing chunks")
        self._set_state(PolicyStatus.STATE_WAITING, "model ready", "active")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop publishing chunks (an inference in progress is dropped) and the threads."""
        with self._publishing:
            self._active = False
        result = super().on_deactivate(state)
        self.service.stop()
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

    def _release(self) -> None:
        if self.service is not None:
            self.service.release()
        if self._entities is not None:
            self._entities.destroy()
        self.service = self._entities = None
        self._pending_instruction = ""
        self.stats = serving.ServingStats()

    def on_image(self, msg: Image, camera: str) -> None:
        """Keep a camera's newest image as a zero-copy view (RGB); refuse it by its header."""
        if self.service is None:
            return
        problem = self.service.offer_image(
            camera, msg.width, msg.height, msg.encoding, len(msg.data),
            conv.stamp_to_seconds(msg.header.stamp), lambda: conv.image_to_rgb(msg))
        if problem is not None:
            self.stats.rejected += 1
            self.get_logger().error(problem, throttle_duration_sec=2.0)
        else:
            self.frame_ids[camera] = msg.header.frame_id   # the overlays' frame

    def on_joint_state(self, msg: JointState) -> None:
        """Keep the newest proprioceptive state (arm joints + gripper opening)."""
        if self.service and (problem := self.service.offer_state(
                conv.stamp_to_seconds(msg.header.stamp), lambda: self.state_of(msg))):
            self.get_logger().error(problem, throttle_duration_sec=2.0)

    def on_instruction(self, msg: String) -> None:
        """Switch task; reasoning is regenerated for the new instruction."""
        if msg.data == self._pending_instruction:
            return  # republished (the sim repeats it for late joiners)
        self.get_logger().info(f"instruction: '{serving.preview(msg.data)}'")
        self._pending_instruction = msg.data
        problem = self.service.worker.set_instruction(msg.data) if self.service else None
        if problem:
            self.get_logger().error(problem)

    def _publish_reasoning(self, sequence: int, text: str, stamp: float, instruction: str,
                           seconds: float) -> None:
        """One new reasoning on the reasoning topic (chunks name it by ``sequence``)."""
        self.reasoning_pub.publish(conv.reasoning_msg(
            sequence, text, stamp=stamp, instruction=instruction, seconds=seconds,
            frame_id=self.robot.base_frame))

    def on_reasoning(self, result: serving.ReasoningResult) -> None:
        """Async mode: publish each finished reasoning (called from the reasoning thread)."""
        if result.error:
            self.get_logger().error(f"reasoning failed: {result.error}",
                                    throttle_duration_sec=2.0)
            return
        self.stats.reasoning_done(result.sequence, result.seconds)
        self._publish_reasoning(result.sequence, result.reasoning.reasoning, result.stamp,
                                result.instruction, result.seconds)

    def on_attention(self, result) -> None:
        """Publish the overlays of one attention map (called from the attention thread)."""
        if result.error:
            self.get_logger().error(f"attention failed: {result.error}",
                                    throttle_duration_sec=5.0)
        elif self._active:
            for cam, overlay in result.value.items():
                self.attention_pubs[cam].publish(conv.numpy_to_image(
                    overlay, "rgb8", stamp=result.stamp, frame_id=self.frame_ids.get(cam, "")))

    def on_decision(self, decision: serving.Decision) -> None:
        """Publish a chunk (+ reasoning) or say why the policy did not act."""
        with self._publishing:
            if self._active:  # else deactivated while this inference ran: nothing goes out
                self._publish_decision(decision)

    def _publish_decision(self, decision: serving.Decision) -> None:
        result = serving.outcome(self.stats, decision, self.service.mode,
                                 self.service.policy.config)
        for reasoning in result.reasonings:
            self._publish_reasoning(*reasoning)
        if result.status != "acting":
            log = self.get_logger().warning if decision.dropped else self.get_logger().error
            if decision.dropped or result.status == "error":
                log(decision.blocked or result.message, throttle_duration_sec=2.0)
            state = {"blocked": PolicyStatus.STATE_BLOCKED, "error": PolicyStatus.STATE_ERROR}
            return self._set_state(state[result.status], result.message)
        self.chunk_pub.publish(conv.numpy_to_action_chunk(
            **result.chunk, frame_id=self.robot.base_frame))
        self._set_state(PolicyStatus.STATE_ACTING, result.message)

    def _set_state(self, state: int, message: str, lifecycle: str | None = None) -> None:
        """Publish a PolicyStatus; ``lifecycle``: the state entered (default: the current)."""
        self.lifecycle = lifecycle or common.lifecycle_state(self)
        self.state, self._text = state, message
        self.message = f"{self.lifecycle}: {message}"
        status = PolicyStatus(
            state=state, message=self.message, lifecycle_state=self.lifecycle,
            model=self.p["model_path"], **self.stats.status(),
            device=str(self.service.policy.device if self.service else self.p["device"]),
            instruction=serving.preview(self._pending_instruction, 200))
        conv.seconds_to_stamp(common.now_seconds(self), status.header.stamp)
        self.status_pub.publish(status)

    def publish_diagnostics(self) -> None:
        """Lifecycle state, latency, observation age and chunk rate on /diagnostics.

        When not active the status goes out again too: no decision publishes one then.
        """
        if not self._active:
            self._set_state(self.state, self._text)
        threads = self.service.diagnostics() if self.service else {}
        values = {"lifecycle_state": self.lifecycle, "state": self.state,
                  "message": self.message, **self.stats.values(), **threads}
        state = {PolicyStatus.STATE_ACTING: "acting", PolicyStatus.STATE_ERROR: "error"}
        level, message = serving.health(state.get(self.state, ""), self.message, self.lifecycle,
                                        self.p["max_image_age"],
                                        threads.get("inference_running_s", 0.0))
        self.diagnostics.publish(_LEVELS[level], message, values)

    def close(self) -> None:
        """Stop the worker threads."""
        self._active = False
        self.service and self.service.stop()


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros policy_node``."""
    return common.run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
