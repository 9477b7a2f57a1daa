"""sim_node: the MuJoCo arm behind the topics a real arm with ros2_control and a RealSense has.

Publishes /joint_states (every control period), the scene camera in the realsense2_camera
layout (color, aligned depth in mm, camera_info), the task status and, on reset, the task's
instruction; takes arm commands as the controller ``arm_controller.plugin`` names does (a
joint_trajectory_controller's trajectories on the robot config's ``topics.trajectory``, or a
JointGroupPositionController's positions on ``/<arm_controller.name>/commands``), Servo twists
and gripper commands; serves ``~/reset_task`` (which also activates an arm controller that its
own update had deactivated, as a restarted controller_manager would). Physics and rendering run
in their own threads.
Refused commands are logged and counted on /diagnostics (``rejected_commands``, of them
``rejected_speed`` for velocity-limit refusals); ``rate_clamped_steps`` counts physics steps on
which the rate limiter held a position target back to the joint velocity limits (step jitter on
a loaded machine does that to a command at the limit), ``rate_jumps_held`` those that asked for
a jump (more than 1.5x the limit: logged, a command check let something through).
"""

from __future__ import annotations

import threading
import time

from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Empty, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.conversions import numpy_to_image, seconds_to_stamp, stamp_to_seconds
from roboalign_ros.msg import TaskStatus
from roboalign_ros.nodes.common import (
    COMMAND_QOS,
    IMAGE_QOS,
    LATCHED_QOS,
    OK,
    Diagnostics,
    declare_parameters,
    now_seconds,
    run_node,
)
from roboalign_ros.sim.controllers import POSITION_TYPE
from roboalign_ros.sim.server import CommandRejected, SceneCamera, SimServer, TooFast
from roboalign_ros.srv import ResetTask

MAX_CATCH_UP = 0.5   # s behind the wall clock that the physics loop makes up step by step
# The sim's own rule after a reset_task (real arms are not teleported): for RESET_SETTLE s, a
# trajectory that would make the reference jump over RESET_JUMP rad was planned for the world
# before it, by a sender that had not heard of the reset yet, and is refused
RESET_SETTLE, RESET_JUMP = 1.0, 0.05

class SimNode(Node):
    """Wires :class:`~roboalign_ros.sim.server.SimServer` to ROS topics and services."""

    def __init__(self, **overrides):
        super().__init__("sim_node", **overrides)
        p = declare_parameters(self, "sim_node")
        self.p = p
        self.server = SimServer(p["robot"], control_period=p["control_period"],
                                servo_timeout=p["servo.timeout"],
                                max_linear=p["servo.max_linear"],
                                max_angular=p["servo.max_angular"],
                                interpolate_from_desired_state=p[
                                    "jtc.interpolate_from_desired_state"],
                                allow_nonzero_velocity_at_trajectory_end=p[
                                    "jtc.allow_nonzero_velocity_at_trajectory_end"],
                                arm_controller=p["arm_controller.plugin"],
                                position_controller=p["arm_controller.name"])
        robot = self.server.robot
        topics = robot.topics
        self.joint_pub = self.create_publisher(JointState, topics["joint_states"], 10)
        self.status_pub = self.create_publisher(TaskStatus, "/roboalign/task_status", 10)
        self.instruction_pub = self.create_publisher(String, p["instruction_topic"], LATCHED_QOS)
        self.scene_reset_pub = self.create_publisher(Empty, p["scene_reset_topic"], COMMAND_QOS)
        self._reset_stamp = 0.0
        # realsense2_camera's layout per camera: colour, aligned depth, their camera_info
        self.cameras = [("scene", p["camera.frame_id"],
                         self._camera_publishers(p["camera.namespace"]))]
        if p["wrist_camera.enabled"]:
            if "wrist" not in [self.server.env.model.camera(i).name
                               for i in range(self.server.env.model.ncam)]:
                raise ValueError("wrist_camera.enabled: the robot's URDF has no wrist camera "
                                 "frame (xacro wrist_camera:=true)")
            self.cameras.append(("wrist", p["wrist_camera.frame_id"],
                                 self._camera_publishers(p["wrist_camera.namespace"])))
        if p["arm_controller.plugin"] == POSITION_TYPE:
            self.arm_topic = f"/{p['arm_controller.name'].strip('/')}/commands"
            self.create_subscription(Float64MultiArray, self.arm_topic, self.on_position,
                                     COMMAND_QOS)
        else:
            self.arm_topic = topics["trajectory"]
            self.create_subscription(JointTrajectory, self.arm_topic, self.on_trajectory,
                                     COMMAND_QOS)
        self.create_subscription(TwistStamped, topics["servo"], self.on_twist, COMMAND_QOS)
        self.create_subscription(Float64MultiArray, topics["gripper"], self.on_gripper,
                                 COMMAND_QOS)
        self.create_service(ResetTask, "~/reset_task", self.on_reset)
        self.diagnostics = Diagnostics(self, "sim_node: physics")
        self.rejected = self.rejected_speed = 0
        self._jumps_logged = 0
        self._status_count = 0
        self._reset(p["task"], p["seed"])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._physics_loop, daemon=True)]
        if p["camera.enabled"]:
            self._threads.append(threading.Thread(target=self._camera_loop, daemon=True))
        for thread in self._threads:
            thread.start()
        self.get_logger().info(
            f"sim ready: robot {robot.name}, task '{self.server.env.task.instruction}', "
            f"arm controller {p['arm_controller.plugin']} on {self.arm_topic}, "
            f"{1 / self.server.control_period:.0f} Hz joint states, camera "
            f"{p['camera.width']}x{p['camera.height']} @ {p['camera.rate']} Hz")

    # ------------------------------------------------------------------ commands

    def on_trajectory(self, msg: JointTrajectory) -> None:
        """joint_trajectory_controller semantics; refused trajectories change nothing."""
        stamp = stamp_to_seconds(msg.header.stamp)
        if 0.0 < stamp < self._reset_stamp:
            self._reject("joint_trajectory", CommandRejected(
                f"stamped {self._reset_stamp - stamp:.3f} s before the last reset_task "
                "(planned for the world before it)"))
            return
        now = now_seconds(self)
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        positions = [list(p.positions) for p in msg.points]
        velocities = [list(p.velocities) for p in msg.points]
        if now - self._reset_stamp < RESET_SETTLE:
            # stamped after the reset but decided before its sender heard of it (a stream's
            # next period): it starts where the arm was before the reset, so taking it would
            # make the reference jump there
            gap = self.server.takeover_gap(msg.joint_names, times, positions, velocities,
                                           start_time=stamp, now=now)
            if gap > RESET_JUMP:
                self._reject("joint_trajectory", CommandRejected(
                    f"planned for the world before the last reset_task: taking it "
                    f"{now - self._reset_stamp:.3f} s after the reset would jump the "
                    f"reference {gap:.3f} rad"))
                return
        try:
            self.server.command_trajectory(
                list(msg.joint_names), times, positions, velocities, start_time=stamp,
                now=now)
        except CommandRejected as exc:
            self._reject("joint_trajectory", exc)

    def on_position(self, msg: Float64MultiArray) -> None:
        """JointGroupPositionController semantics; a refused command changes nothing."""
        now = now_seconds(self)
        if now - self._reset_stamp < RESET_SETTLE:
            # as for trajectories: sent before its sender heard of the reset, it would pull
            # the arm back to where it was
            gap = self.server.position_gap(msg.data)
            if gap > RESET_JUMP:
                self._reject("position", CommandRejected(
                    f"sent for the world before the last reset_task: taking it "
                    f"{now - self._reset_stamp:.3f} s after the reset would jump the "
                    f"reference {gap:.3f} rad"))
                return
        try:
            self.server.command_position(list(msg.data))
        except CommandRejected as exc:
            self._reject("position", exc)

    def on_twist(self, msg: TwistStamped) -> None:
        """MoveIt Servo semantics: base-frame twist, halts when commands stop."""
        t, w = msg.twist.linear, msg.twist.angular
        try:
            self.server.command_twist([t.x, t.y, t.z, w.x, w.y, w.z],
                                      stamp=stamp_to_seconds(msg.header.stamp),
                                      now=now_seconds(self))
        except CommandRejected as exc:
            self._reject("twist", exc)

    def on_gripper(self, msg: Float64MultiArray) -> None:
        """Finger position in m (forward_command_controller); the motor holds its limits."""
        try:
            note = self.server.command_gripper(list(msg.data))
        except CommandRejected as exc:
            self._reject("gripper", exc)
            return
        if note:
            self.get_logger().error(f"gripper: {note}", throttle_duration_sec=1.0)

    def _reject(self, what: str, exc: Exception) -> None:
        self.rejected += 1
        self.rejected_speed += isinstance(exc, TooFast)
        self.get_logger().error(f"rejected {what} command: {exc}")

    def on_reset(self, request, response):
        """Reset to a task and seed."""
        try:
            response.instruction = self._reset(request.task, request.seed)
            response.success, response.message = True, "reset"
            if not request.task:  # also what a name starting with NUL arrives as
                response.message = (f"reset the current task {self.server.task_status()[0]!r}"
                                    " (task name empty)")
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().error(f"reset refused: {exc}")
        return response

    def _reset(self, task: str, seed: int) -> str:
        instruction = self.server.reset(task, seed)
        # a trajectory stamped before this was planned for the old world (the sim's own rule:
        # real arms are not teleported); the executor is told to drop its plans too
        self._reset_stamp = now_seconds(self)
        self.scene_reset_pub.publish(Empty())
        if self.p["publish_instruction"]:
            self.instruction_pub.publish(String(data=instruction))
        self.get_logger().info(f"reset: '{instruction}' (seed {seed})")
        return instruction

    # ------------------------------------------------------------------ loops

    def _physics_loop(self) -> None:
        period = self.server.control_period
        status_every = max(1, int(round(1.0 / (self.p["status_rate"] * period))))
        msg = JointState(name=list(self.server.robot.joint_names))
        # The physics advances one period per step whatever the wall clock does, so joint
        # states are stamped on that schedule (each stamp one period after the last, locked
        # to the wall clock): stamps taken from the clock after a preempted step would put a
        # period of motion into a few milliseconds, i.e. joints faster than their limits.
        # Behind the wall clock (a starved process), it catches up step by step, each step
        # sampling the commands at its own time: the motion is the one a real arm, which does
        # not stall, would have made (its joint states arrive in a burst, stamped right).
        # Skipping the time instead made the controller's reference jump (measured: a 0.3 s
        # stall read as 1.04x the velocity limit, 40 samples in 30 s).
        t, deadline, tick, late = now_seconds(self), time.perf_counter(), 0, 0
        while not self._stop.is_set():
            sample = self.server.step(t)      # commands sampled at the step's start ...
            for error in self.server.controller_errors():   # its update failed
                self._reject("position", CommandRejected(error))
            t += period                       # ... the state is the one at its end
            msg.header.stamp = seconds_to_stamp(t, msg.header.stamp)
            msg.position, msg.velocity = sample.position.tolist(), sample.velocity.tolist()
            msg.effort = sample.effort.tolist()
            self.joint_pub.publish(msg)
            tick += 1
            if tick % status_every == 0:
                self._publish_status(t, late)
            deadline += period
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -MAX_CATCH_UP:
                # Too far behind to catch up (a machine too slow for real time): the sim runs
                # slower than real time and its schedule restarts from now.
                late += 1
                deadline = time.perf_counter()
                t = max(t, now_seconds(self))

    def _publish_status(self, now: float, late: int) -> None:
        task, instruction, seed, elapsed, success = self.server.task_status()
        self._status_count += 1
        if self.p["publish_instruction"] and self._status_count % 10 == 0:
            # repeated: volatile subscribers that start late (e.g. while a model loads) get it
            self.instruction_pub.publish(String(data=instruction))
        status = TaskStatus(task=task, instruction=instruction, seed=seed, elapsed=elapsed,
                            success=success)
        seconds_to_stamp(now, status.header.stamp)
        self.status_pub.publish(status)
        limiter = self.server.limiter
        if limiter.jumps > self._jumps_logged:
            self._jumps_logged = limiter.jumps
            self.get_logger().warning(f"rate limiter: {limiter.last_jump} ({limiter.jumps} "
                                      "jumps held so far)", throttle_duration_sec=2.0)
        self.diagnostics.publish(OK, "running", {"sim_time": elapsed, "resyncs": late,
                                                "rejected_commands": self.rejected,
                                                "rejected_speed": self.rejected_speed,
                                                "rate_clamped_steps": limiter.clamped,
                                                "rate_jumps_held": limiter.jumps})

    def _camera_publishers(self, namespace: str) -> dict:
        ns = namespace.rstrip("/")
        return {"color": self.create_publisher(Image, f"{ns}/color/image_raw", IMAGE_QOS),
                "info": self.create_publisher(CameraInfo, f"{ns}/color/camera_info", IMAGE_QOS),
                "depth": self.create_publisher(
                    Image, f"{ns}/aligned_depth_to_color/image_raw", IMAGE_QOS),
                "depth_info": self.create_publisher(
                    CameraInfo, f"{ns}/aligned_depth_to_color/camera_info", IMAGE_QOS)}

    def _camera_loop(self) -> None:
        p = self.p
        # every camera renders in this thread (the GL contexts are per thread) with the same
        # stamp: their frames are in sync by construction
        cameras = [(SceneCamera(self.server, p["camera.width"], p["camera.height"], name,
                                depth=p["camera.depth"]), frame_id, pubs)
                   for name, frame_id, pubs in self.cameras]
        infos = [self._camera_info(cam, frame_id) for cam, frame_id, _ in cameras]
        period, deadline = 1.0 / p["camera.rate"], time.perf_counter()
        try:
            while not self._stop.is_set():
                stamp = now_seconds(self)  # time of the state snapshot = observation time
                for (camera, frame_id, pubs), info in zip(cameras, infos):
                    frame = camera.render()
                    pubs["color"].publish(numpy_to_image(frame.rgb, "rgb8", stamp=stamp,
                                                         frame_id=frame_id))
                    seconds_to_stamp(stamp, info.header.stamp)
                    pubs["info"].publish(info)
                    if frame.depth_mm is not None:
                        pubs["depth"].publish(numpy_to_image(frame.depth_mm, "16UC1",
                                                             stamp=stamp, frame_id=frame_id))
                        pubs["depth_info"].publish(info)
                deadline += period
                delay = deadline - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    deadline = time.perf_counter()  # rendering slower than the rate: no backlog
        finally:
            for camera, _, _ in cameras:
                camera.close()

    def _camera_info(self, camera: SceneCamera, frame_id: str) -> CameraInfo:
        fx, fy, cx, cy = camera.intrinsics
        info = CameraInfo(width=camera.width, height=camera.height,
                          distortion_model="plumb_bob", d=[0.0] * 5)
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        info.header.frame_id = frame_id
        return info

    def close(self) -> None:
        """Stop the loops."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros sim_node``."""
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
