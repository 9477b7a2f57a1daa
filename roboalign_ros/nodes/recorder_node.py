"""recorder_node: cameras + joint states + commands -> LeRobot v3 episodes (teleop, rollouts).

Wiring: subscriptions push stamped samples into a
:class:`~roboalign_ros.recording.session.RecordingSession`; a timer at the dataset fps samples
the grid (nearest stamp, max skew; missing/skewed frames are dropped and counted); a thread in
the session spools each frame raw to disk and an encoder process, at a lower CPU priority,
encodes the videos behind it and saves the episode (``stop_wait``: how long a stop waits for
that; the status message says "encoding" until it is saved). Services ``~/start_episode``,
``~/stop_episode``, ``~/get_status``; status on ``/roboalign/recorder_status`` and
``/diagnostics``.
"""

from __future__ import annotations

from pathlib import Path

from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.conversions import (
    seconds_to_stamp,
    stamp_to_seconds,
)
from roboalign_ros.msg import ActionChunk, Reasoning, RecorderStatus
from roboalign_ros.nodes.common import (
    ERROR,
    LATCHED_QOS,
    OK,
    WARN,
    Diagnostics,
    declare_parameters,
    now_seconds,
    run_node,
    sensor_qos_for,
)
from roboalign_ros.recording import actions as act
from roboalign_ros.recording.bag import BagRecorder
from roboalign_ros.recording.feed import MessageFeed
from roboalign_ros.recording.session import (
    RecorderState,
    RecordingSession,
    SessionConfig,
    outcome_success,
)
from roboalign_ros.robot import load_robot_config
from roboalign_ros.srv import GetRecorderStatus, StartEpisode, StopEpisode

COMMAND_SUB_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


class RecorderNode(Node):
    """Wires :class:`RecordingSession` to ROS topics and services."""

    def __init__(self, **overrides):
        super().__init__("recorder_node", **overrides)
        p = declare_parameters(self, "recorder_node")
        robot = load_robot_config(p["robot"])
        cameras, topics = list(p["cameras"]), list(p["camera_topics"])
        if len(topics) != len(cameras):
            raise ValueError(f"camera_topics: {len(topics)} topics for cameras {cameras}")
        topics = [t or robot.color_topic for t in topics]
        depth, depth_topics = list(p["depth_cameras"]), list(p["depth_topics"])
        if len(depth_topics) != len(depth):
            if depth_topics or len(depth) != 1:
                raise ValueError(f"depth_topics: {len(depth_topics)} topics for depth cameras "
                                 f"{depth}")
            depth_topics = [""]  # one depth camera: the robot config's aligned depth
        depth_topics = [t or robot.depth_topic for t in depth_topics]
        source = act.check_action_source(p["action_source"])
        image_qos = sensor_qos_for(p["sensor_reliability"], 10)
        joint_qos = sensor_qos_for(p["sensor_reliability"], 200)  # 0.4 s at 500 Hz
        self.session = RecordingSession(SessionConfig(
            root=Path(p["dataset_root"]).expanduser(), fps=int(p["fps"]),
            arm_joints=robot.arm_joints, cameras=cameras, robot_type=robot.name,
            depth_cameras=depth, lerobot_depth=bool(p["lerobot_depth"]),
            action_source=source, max_skew=p["max_skew"],
            delay=None if p["sample_delay"] < 0 else p["sample_delay"],
            gripper_fallback=p["gripper_fallback"], servo_timeout=p["servo_timeout"],
            action_max_age=p["action_max_age"], queue_seconds=p["queue_seconds"],
            codec=p["video.codec"], crf=None if p["video.crf"] < 0 else p["video.crf"],
            gop=p["video.gop"], encoder_threads=p["video.threads"],
            stream_workers=p["video.stream_workers"], encoder_nice=p["video.nice"],
            spool_dir=Path(p["spool.dir"]).expanduser() if p["spool.dir"] else None,
            spool_max_gb=p["spool.max_gb"], recover_partial=p["spool.recover_partial"]),
            clock=lambda: now_seconds(self), on_error=self._on_error, on_info=self._on_info)
        self.p, self.robot = p, robot
        self.feed = MessageFeed(self.session, robot, p["action_max_age"])
        self.bad_inputs = 0
        self.input_lag: dict[str, float] = {}  # s, since the episode started

        self._bag_topics: dict[str, str] = {}  # topic -> type, when bag.enabled
        sub = self._subscribe
        compressed = p["bag.images"] == "compressed"
        self._compressed_topics: dict[str, str] = {}  # camera -> its topic in the bag
        for cam, topic in zip([*cameras, *depth], [*topics, *depth_topics]):
            in_bag = cam not in depth or p["bag.depth"]
            sub(Image, topic, lambda m, c=cam: self.on_image(c, m), image_qos,
                bag=p["bag.images"] == "raw" and in_bag)
            if compressed and p["bag.enabled"] and in_bag:
                self._compressed_topics[cam] = topic + ("/compressedDepth" if cam in depth
                                                        else "/compressed")
                sub(CompressedImage, self._compressed_topics[cam], None, image_qos)
        sub(JointState, robot.topics["joint_states"], self.on_joint_state, joint_qos)
        if source == "joint_trajectory":
            sub(JointTrajectory, robot.trajectory_topic, self.on_trajectory, COMMAND_SUB_QOS)
        elif source == "servo":
            sub(TwistStamped, robot.servo_topic, self.on_twist, COMMAND_SUB_QOS)
        else:
            sub(ActionChunk, p["action_chunk_topic"], self.on_chunk, COMMAND_SUB_QOS)
        if source != "action_chunk":
            sub(Float64MultiArray, robot.gripper_topic, self.on_gripper, COMMAND_SUB_QOS)
        sub(String, p["instruction_topic"], self.feed.instruction, LATCHED_QOS)
        self.bag: BagRecorder | None = None
        if p["bag.enabled"]:
            # what the dataset does not keep, for the bag only
            sub(CameraInfo, robot.topics["camera_info"], None, image_qos)
            if source != "action_chunk":
                sub(ActionChunk, p["action_chunk_topic"], None, COMMAND_SUB_QOS)
            sub(Reasoning, p["reasoning_topic"], None, COMMAND_SUB_QOS)
            self.bag = BagRecorder(Path(p["dataset_root"]).expanduser(), self._bag_topics,
                                   p["bag.queue_size"], p["bag.preroll"],
                                   f"{self.get_fully_qualified_name()}/episode_events",
                                   p["bag.compression"], p["bag.nice"])
        self.create_timer(1.0 / p["fps"], self.session.tick)

        self.create_service(StartEpisode, "~/start_episode", self.on_start)
        self.create_service(StopEpisode, "~/stop_episode", self.on_stop)
        self.create_service(GetRecorderStatus, "~/get_status", self.on_get_status)
        self.status_pub = self.create_publisher(RecorderStatus, p["status_topic"], LATCHED_QOS)
        self.diagnostics = Diagnostics(self, "recorder_node: recording")
        self.create_timer(1.0 / p["status_rate"], self.publish_status)
        self.get_logger().info(
            f"recorder ready: {self.session.config.root} at {p['fps']} fps, cameras "
            f"{dict(zip([*cameras, *depth], [*topics, *depth_topics]))}, action from "
            f"{source}, max skew {p['max_skew']} s")
        self.publish_status()

    # ------------------------------------------------------------------ inputs

    def _subscribe(self, msg_type, topic: str, callback, qos, bag: bool = True) -> None:
        """Subscribe; with bag.enabled (and ``bag``) every message also goes to the bag."""
        if not (self.p["bag.enabled"] and bag):
            self.create_subscription(msg_type, topic, callback, qos)
            return
        self._bag_topics[topic] = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"

        def both(msg):
            bag = self.bag
            if bag is not None:  # between episodes: the next bag's pre-roll
                bag.push(topic, self.get_clock().now().nanoseconds, serialize_message(msg))
            if callback is not None:
                callback(msg)

        self.create_subscription(msg_type, topic, both, qos)

    def on_image(self, camera: str, msg: Image) -> None:
        """Camera frame -> session (zero-copy view; converted in the spool thread)."""
        self._note_lag(camera, msg)
        self._feed(f"image from camera {camera!r}", self.feed.image, camera, msg)

    def on_joint_state(self, msg: JointState) -> None:
        """Joint states -> state vector (arm joints + gripper opening)."""
        self._note_lag("state", msg)
        self._feed("joint_states", self.feed.joint_state, msg)

    def _note_lag(self, stream: str, msg) -> None:
        """Track the largest receive time - stamp per stream while recording.

        Beyond sample_delay, frames are dropped.
        """
        if self.session.state != RecorderState.RECORDING:
            return
        lag = now_seconds(self) - stamp_to_seconds(msg.header.stamp)
        if lag > self.input_lag.get(stream, 0.0):
            self.input_lag[stream] = lag

    def on_trajectory(self, msg: JointTrajectory) -> None:
        """Commanded joint trajectory (keyed by receive time; stamp 0 = now)."""
        self._feed("joint_trajectory", self.feed.trajectory, msg, now_seconds(self))

    def on_twist(self, msg: TwistStamped) -> None:
        """Servo twist command."""
        self._feed("servo twist", self.feed.twist, msg, now_seconds(self))

    def on_gripper(self, msg: Float64MultiArray) -> None:
        """Gripper opening command."""
        self._feed("gripper command", self.feed.gripper, msg, now_seconds(self))

    def on_chunk(self, msg: ActionChunk) -> None:
        """Policy action chunk (joint_position space, arm joints + gripper)."""
        self._feed("action chunk", self.feed.chunk, msg, now_seconds(self))

    def _feed(self, what: str, method, *args) -> None:
        try:
            method(*args)
        except ValueError as exc:
            self._bad_input(what, exc)

    def _bad_input(self, what: str, exc: Exception) -> None:
        self.bad_inputs += 1
        self.get_logger().warning(f"ignored {what}: {exc}", throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ services

    def on_start(self, request, response):
        """Start an episode (task empty: the latest instruction)."""
        self.input_lag.clear()
        r = self.session.start_episode(request.task, request.operator_name
                                       or self.p["default_operator"], request.source or "teleop")
        response.success, response.message, response.episode_index = r.success, r.message, \
            r.episode_index
        self._log_result("start_episode", r)
        if r.success and self.bag is not None:
            for cam, topic in self._compressed_topics.items():
                if not self.count_publishers(topic):
                    self.get_logger().warning(
                        f"bag.images compressed: nobody publishes {topic} (the camera driver's "
                        f"image_transport): the bag of episode {r.episode_index} has no images "
                        f"of {cam!r}")
            try:
                s = self.session
                self.bag.start(r.episode_index, self.get_clock().now().nanoseconds, {
                    "event": "start", "episode": r.episode_index, "grid_start": s.grid_start,
                    "task": s.status().task, "fps": s.config.fps})
            except Exception as exc:  # noqa: BLE001 - the episode records without its bag
                self.get_logger().error(f"bag of episode {r.episode_index} not started: {exc}")
        return response

    def on_stop(self, request, response):
        """Stop the episode: save (with outcome) or discard; a bad outcome stops nothing."""
        try:
            success = outcome_success(request.outcome)
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            response.episode_index = self.session.status().episode_index
            self.get_logger().error(f"stop_episode refused: {exc}")
            return response
        r = self.session.stop_episode(bool(request.save), success, wait=self.p["stop_wait"])
        if self.bag is not None and self.bag.recording:
            try:  # kept exactly when the episode was saved
                path = self.bag.stop(save=bool(request.save) and r.success,
                                     stamp_ns=self.get_clock().now().nanoseconds,
                                     event={"event": "stop", "episode": r.episode_index,
                                            "end": self.session.episode_end})
                if path is not None:
                    self.get_logger().info(f"bag of episode {r.episode_index}: {path}")
            except Exception as exc:  # noqa: BLE001
                self.get_logger().error(f"bag of episode {r.episode_index} lost: {exc}")
        response.success, response.message = r.success, r.message
        response.episode_index, response.frames, response.path = r.episode_index, r.frames, \
            r.path
        if request.notes:
            self.get_logger().info(f"episode {r.episode_index} notes: {request.notes}")
        self._log_result("stop_episode", r)
        self.publish_status()
        return response

    def on_get_status(self, request, response):
        """Return the current status."""
        response.status = self._status_msg()
        return response

    def _log_result(self, what: str, r) -> None:
        if r.success:
            self.get_logger().info(f"{what}: {r.message}")
        else:
            self.get_logger().error(f"{what}: {r.message}")

    def _on_error(self, message: str) -> None:
        self.get_logger().error(message)

    def _on_info(self, message: str) -> None:
        self.get_logger().info(message)

    # ------------------------------------------------------------------ status

    def _status_msg(self) -> RecorderStatus:
        s = self.session.status()
        msg = RecorderStatus(state=int(s.state), message=s.message, dataset_root=s.dataset_root,
                             task=s.task, episode_index=s.episode_index,
                             episodes_saved=s.episodes_saved, frames=s.frames,
                             frames_dropped=s.frames_dropped, max_skew=float(s.max_skew))
        seconds_to_stamp(now_seconds(self), msg.header.stamp)
        return msg

    def publish_status(self) -> None:
        """Publish RecorderStatus and the drop/skew counters on /diagnostics."""
        self.status_pub.publish(self._status_msg())
        s = self.session.status()
        level = ERROR if s.state == RecorderState.ERROR else WARN if s.drops else OK
        self.diagnostics.publish(level, s.message, {
            "state": s.state.name, "episode_index": s.episode_index, "frames": s.frames,
            "frames_dropped_total": s.frames_dropped, "max_skew": s.max_skew,
            "writer_queue": s.queued, "bad_inputs": self.bad_inputs,
            "encoding": s.encoding, "encoder_backlog_frames": s.backlog,
            "spool_mb": round(s.spool_bytes / 1e6, 1),
            **({"bag_dropped": self.bag.dropped, "bag_error": self.bag.error or ""}
               if self.bag is not None else {}),
            **{f"dropped.{k}": v for k, v in s.drops.items()},
            **{f"received.{k}": v for k, v in s.received.items()},
            **{f"input_lag_max_ms.{k}": round(1e3 * v, 1) for k, v in self.input_lag.items()}})

    def close(self) -> None:
        """Discard an unsaved episode and stop the writer thread."""
        if self.session.state == RecorderState.RECORDING:
            self.get_logger().warning("shutting down mid-episode: the episode is discarded")
        self.session.close()
        if self.bag is not None:
            self.bag.close()


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros recorder_node``.

    Single-threaded on purpose (encoding runs in the session's encoder process): at 500 Hz
    joint states rclpy's MultiThreadedExecutor alone costs more CPU than the recording.
    (rclpy.experimental.EventsExecutor would be cheaper still, but in the Kilted wheels tried
    here it served neither services nor timers.)
    """
    return run_node(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
