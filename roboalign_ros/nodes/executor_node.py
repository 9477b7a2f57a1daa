"""executor_node: action chunks in, a safe command stream to the arm out.

Wiring: /roboalign/action_chunk -> ChunkExecutor.submit; a control thread at ``rate`` Hz ->
ChunkExecutor.tick (with the newest joint state and its age) -> the backend the registry
builds for ``backend`` (nodes/backends.py: joint_trajectory via the e-stop process, servo,
position, ...); /roboalign/estop -> e-stop (the e-stop process stops the arm;
this node's own stop is sent from the callback itself, on a thread of its own);
/roboalign/instruction -> flush; ``~/go_home`` -> a slow trajectory home (or MoveItPy
plan/execute), then hold there until a chunk observed after homing arrives. Delay
compensation, blending, the watchdogs, the feasibility rule and the safety envelope live in
roboalign_ros.control.

A lifecycle (managed) node: ``configure`` reads the parameters, builds the executor with its
limits and backend and subscribes; ``activate`` starts the command stream; ``deactivate`` stops
it and holds the arm where it is (the controller's stop, mid-chunk included; chunks are refused
until the next activate, and streaming then resumes from the measured position); ``cleanup``
releases it all. ``autostart`` (default true) configures and activates at startup.

The e-stop is subscribed twice, reliable and best effort, so that any publisher is heard
(a best-effort subscription alone would lose a reliable publisher's retransmissions; a
reliable one alone does not match a best-effort publisher at all). A message heard on both
is taken once. Both live on a node and executor of their own (``<name>_estop``) spun by their
own thread, so no other callback can delay an e-stop; and chunks arrive serialized and are
refused by size before anything decodes them. Taking a huge message still holds this process's
interpreter lock for tens of ms, so with the joint_trajectory backend (``estop_process``,
default true) a process of its own (``<name>_estop_guard``, :mod:`.estop_guard`) publishes the
trajectories and subscribes to the e-stop too: it sends the stop itself and drops whatever this
node decided before it. This node follows it, and releases the e-stop.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Empty, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from roboalign_ros.control.build import build_executor
from roboalign_ros.control.chunk import Chunk, ChunkError
from roboalign_ros.control.estop_gate import GateLimits
from roboalign_ros.control.kinematics import Kinematics
from roboalign_ros.control.planned_path import ExecutedPath, planned_path
from roboalign_ros.conversions import (
    ConversionError,
    JointStateMapper,
    action_chunk_to_numpy,
    stamp_to_seconds,
)
from roboalign_ros.msg import ActionChunk
from roboalign_ros.nodes.backends import (
    JointTrajectoryBackend,
    backend_for,
    make_backend,
    make_gripper,
)
from roboalign_ros.nodes.common import (
    COMMAND_QOS,
    ERROR,
    ESTOP_BEST_EFFORT_QOS,
    OK,
    SENSOR_QOS,
    WARN,
    Diagnostics,
    Entities,
    autostart,
    declare_parameters,
    lifecycle_state,
    now_seconds,
    parameter_values,
    run_node,
)
from roboalign_ros.nodes.estop_guard import EstopGuard, GuardLost, GuardSettings
from roboalign_ros.nodes.markers import path_markers
from roboalign_ros.nodes.moveit_backend import MoveItPyBackend
from roboalign_ros.robot import load_robot_config

# Serialized bytes a chunk may take beyond its actions (names, instruction, reasoning text).
CHUNK_TEXT_BYTES = 256 * 1024


class EstopListener:
    """The e-stop subscriptions on a node, executor and thread of their own.

    rclpy runs a node's callbacks one at a time on one executor, so a callback that takes long
    (decoding a huge message) would delay the e-stop behind it. The listener's node takes no
    command-line arguments (a ``__node`` remap would rename it too); it is given the topic as
    the main node resolved it, remaps included.
    """

    def __init__(self, node, topic: str, callback):
        import rclpy

        self.node = rclpy.create_node(f"{node.get_name()}_estop", namespace=node.get_namespace(),
                                      context=node.context, use_global_arguments=False)
        topic = node.resolve_topic_name(topic)
        for qos in (COMMAND_QOS, ESTOP_BEST_EFFORT_QOS):
            self.node.create_subscription(Bool, topic, callback, qos)
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="estop", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        import os

        from rclpy.executors import ExternalShutdownException

        # ahead of the process's other threads where the OS lets us (CAP_SYS_NICE or an
        # rlimit for nice, as on a real-time robot PC); without it the thread still has its own
        # executor, which is what keeps other callbacks from delaying it
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        except OSError:
            self.node.get_logger().info("e-stop thread: no permission to raise its priority "
                                        "(nice -10); it runs at the process's priority")
        try:
            self._executor.spin()
        except ExternalShutdownException:  # the context was shut down under us
            pass

    def destroy(self) -> None:
        """Stop the thread and destroy the node."""
        self._executor.shutdown(timeout_sec=1.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
# /diagnostics level of each command kind (only tracking is OK).
_LEVEL = {"track": OK, "hold": WARN, "paused": WARN, "no_state": ERROR, "estop": ERROR,
          "halted": ERROR}


class ExecutorNode(LifecycleNode):
    """Wires :class:`~roboalign_ros.control.executor.ChunkExecutor` to topics and a backend."""

    def __init__(self, **overrides):
        super().__init__("executor_node", **overrides)
        # config/parameters/executor_node.yaml (the backends' own included); read at configure,
        # so that ros2 param set works before it
        declare_parameters(self, "executor_node", check=False)
        self.p: dict | None = None
        self.chunk_executor = self.backend = self._entities = None
        self.home_backend = self.home_trajectory = self.gripper = None
        self._active = False
        self._error = ""                          # why the last configure failed
        self._periods: deque[float] = deque(maxlen=500)
        self._reported_kind = None
        self._stop = threading.Event()
        self._send_lock = threading.Lock()       # a tick's decision and its publication
        self._thread: threading.Thread | None = None
        self.estop_listener: EstopListener | None = None
        self.estop_guard: EstopGuard | None = None
        self._held_back = 0   # tracks the e-stop process held back, as last seen
        self.diagnostics = Diagnostics(self, "executor_node: command stream")  # in every state
        self.create_timer(1.0, self.publish_diagnostics)
        if self.get_parameter("autostart").value:
            autostart(self)

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Parameters -> robot config, executor and limits, backend, subscriptions."""
        self._entities = Entities(self)
        try:
            self._configure(parameter_values(self, "executor_node"))
        except Exception as exc:  # a bad parameter: say which, stay unconfigured
            self._release()
            self._error = f"configure failed: {exc}"
            self.get_logger().error(self._error)
            self.publish_diagnostics("unconfigured")
            return TransitionCallbackReturn.FAILURE
        self._error = ""
        p = self.p
        self.get_logger().info(
            f"configured: {p['action_space']} chunks on {self.robot.name} via {p['backend']} at "
            f"{p['rate']:.0f} Hz (blend {p['blend']}, safety envelope on: velocity "
            f"x{p['safety.velocity_scale']}, max step {p['safety.max_step']} rad, acceleration "
            f"{p['safety.acc_max']} rad/s^2, workspace {p['safety.workspace']}; joint-state "
            f"watchdog {p['state_timeout']} s)")
        self.publish_diagnostics("inactive")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self, p: dict) -> None:
        self.p = p
        spec = backend_for(p["backend"], p["action_space"])  # before anything is built
        robot = load_robot_config(p["robot"])
        self.robot = robot
        if not p["safety.workspace"]:
            self.get_logger().warning("safety.workspace is off: the tool box is not enforced")
        self.chunk_executor = build_executor(p, robot, Kinematics(robot))
        # nothing streams before activate: chunks observed until then are refused
        self.chunk_executor.pause(now_seconds(self), float("inf"), "inactive")
        if p["estop_process"] and spec.estop_process:
            self.estop_guard, self._held_back = self._start_estop_guard(p, robot), 0
        self.backend = make_backend(p["backend"], self, robot, p, guard=self.estop_guard)
        self.gripper = make_gripper(self, robot)
        self.home_backend = (MoveItPyBackend(self, robot, p["planning_group"] or None)
                             if p["home_backend"] == "moveit_py" else None)
        # the slow home move: through the backend where it runs stamped trajectories itself
        self.home_trajectory = (self.backend if hasattr(self.backend, "publish")
                                else JointTrajectoryBackend(self, robot))
        self.arm_positions = JointStateMapper(robot, with_gripper=False)
        self._instruction: str | None = None
        self.measured_q: np.ndarray | None = None
        self._state_stamp: float | None = None   # header stamp of the newest joint state
        self._state_arrival = -np.inf            # when it arrived (monotonic)
        self._estop_seen: OrderedDict[tuple, None] = OrderedDict()
        # serialized: a chunk larger than any the limits accept is refused before decoding
        self._max_chunk_bytes = (4 * self.chunk_executor.limits.max_horizon
                                 * len(self.chunk_executor.limits.dimension_names)
                                 + CHUNK_TEXT_BYTES)
        self.create_subscription(ActionChunk, p["chunk_topic"], self.on_chunk, COMMAND_QOS,
                                 raw=True)
        self.create_subscription(JointState, robot.topics["joint_states"], self.on_joint_state,
                                 SENSOR_QOS)
        self.estop_listener = EstopListener(self, p["estop_topic"], self.on_estop)
        self.create_subscription(String, p["instruction_topic"], self.on_instruction,
                                 COMMAND_QOS)
        self.create_subscription(Empty, p["scene_reset_topic"], self.on_scene_reset, COMMAND_QOS)
        self.create_service(Trigger, "~/go_home", self.on_go_home)
        # the planned tool path in RViz (joint_position chunks; FK of the envelope's model)
        self.path_pub = self.executed = None
        if p["path_topic"] and self.chunk_executor.joint_space:
            self.path_pub = self.create_lifecycle_publisher(MarkerArray, p["path_topic"], 10)
            self.executed = ExecutedPath(self.chunk_executor.envelope)

    def _start_estop_guard(self, p: dict, robot) -> EstopGuard:
        limits, config = self.chunk_executor.envelope.limits, self.chunk_executor.config
        acc = np.broadcast_to(np.asarray(limits.acc_max, float), (len(robot.arm_joints),))
        reach = config.period + config.lead_time   # see GateLimits.join_tolerance
        return EstopGuard(GuardSettings(
            node_name=f"{self.get_name()}_estop_guard", namespace=self.get_namespace(),
            estop_topic=self.resolve_topic_name(p["estop_topic"]),
            trajectory_topic=self.resolve_topic_name(robot.trajectory_topic),
            joint_names=tuple(robot.arm_joints),
            limits=GateLimits(acc_max=tuple(acc.tolist()), lower=tuple(limits.lower.tolist()),
                              upper=tuple(limits.upper.tolist()),
                              brake_time_min=config.brake_time_min,
                              join_tolerance=tuple((acc * reach**2).tolist())),
            use_sim_time=bool(self.get_parameter("use_sim_time").value)))

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the command stream: chunks observed from now on, from the measured position."""
        self.chunk_executor.resume(now_seconds(self))
        self._reported_kind = None
        self._periods.clear()
        self._active = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._control_loop, daemon=True)
        self._thread.start()
        if hasattr(self.backend, "activate"):  # MoveIt Servo: set its command type / start it
            self.backend.activate()
        self.get_logger().info("active: following chunks")
        self.publish_diagnostics("active")
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop the stream and hold the arm where it is now (mid-chunk too)."""
        self._hold()
        self.get_logger().info("inactive: holding the arm at its current position")
        self.publish_diagnostics("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Release the executor, its limits, backend and topics: back to unconfigured."""
        self._release()
        self.publish_diagnostics("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Hold the arm (if it was streaming) and release everything."""
        if self.backend is not None:
            self._hold()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """A transition raised: hold, release, and go back to unconfigured."""
        self.get_logger().error(f"transition from {state.label} failed: releasing everything")
        self.on_shutdown(state)
        return TransitionCallbackReturn.SUCCESS

    def _stop_stream(self) -> None:
        self._active = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _hold(self) -> None:
        """No more commands from the stream; the arm brakes to rest from where it was going."""
        self._stop_stream()
        if self.home_backend is not None:
            self.home_backend.cancel()
        if hasattr(self.backend, "deactivate"):
            self.backend.deactivate()
        self.backend.send(self.chunk_executor.hold(now_seconds(self), self.measured_q))
        if self.executed is not None:
            self.executed.clear()

    def _release(self) -> None:
        self._stop_stream()
        if self.estop_listener is not None:
            self.estop_listener.destroy()
            self.estop_listener = None
        if self.estop_guard is not None:
            self.estop_guard.close()
            self.estop_guard = None
        for backend in (self.backend, self.home_backend):
            if backend is not None and hasattr(backend, "close"):
                backend.close()
        if self.gripper is not None and hasattr(self.gripper, "destroy"):
            self.gripper.destroy()
        if self._entities is not None:
            self._entities.destroy()
        self._entities = self.chunk_executor = self.backend = self.p = None
        self.home_backend = self.home_trajectory = self.gripper = None
        self.path_pub = self.executed = None

    # ------------------------------------------------------------------ inputs

    def on_chunk(self, raw: bytes) -> None:
        """Validate and queue a chunk (serialized); refusals are logged (throttled), counted."""
        if len(raw) > self._max_chunk_bytes:
            self.chunk_executor.counters["rejected_malformed"] += 1
            self.get_logger().error(
                f"chunk rejected: {len(raw)} bytes serialized, more than any chunk within "
                f"max_horizon x {len(self.chunk_executor.limits.dimension_names)} dimensions "
                f"({self._max_chunk_bytes} bytes); not decoded", throttle_duration_sec=1.0)
            return
        if not self._active:
            self.chunk_executor.counters["rejected_inactive"] += 1
            self.get_logger().warning("chunk ignored: executor_node is inactive (activate it "
                                      "to follow chunks)", throttle_duration_sec=5.0)
            return
        now = now_seconds(self)
        try:
            f = action_chunk_to_numpy(deserialize_message(raw, ActionChunk))
            chunk = Chunk(f.stamp, f.dt, f.actions, f.dimension_names, f.action_space,
                          f.sequence)
        except (ConversionError, ChunkError) as exc:
            self.get_logger().error(f"chunk rejected: {exc}", throttle_duration_sec=1.0)
            self.chunk_executor.counters["rejected_malformed"] += 1
            return
        accepted, reason = self.chunk_executor.submit(chunk, now)
        if not accepted:
            self.get_logger().warning(f"chunk {f.sequence} rejected: {reason}",
                                   throttle_duration_sec=1.0)
        elif self.path_pub is not None:
            self._publish_path(chunk, now)

    def _publish_path(self, chunk: Chunk, now: float) -> None:
        """The accepted chunk's tool path (and the part executed so far) for RViz."""
        try:
            path = planned_path(chunk, self.chunk_executor.envelope)
        except ValueError:
            return
        self.path_pub.publish(path_markers(path, self.executed.positions,
                                           self.robot.base_frame, now))

    def on_joint_state(self, msg: JointState) -> None:
        """Keep the latest measured arm position (joints matched by name) and its times."""
        try:
            q = self.arm_positions(msg)
        except ConversionError:
            return  # another robot's, a partial (e.g. gripper-only) or a broken joint state
        stamp = stamp_to_seconds(msg.header.stamp)
        self.measured_q, self._state_arrival = q, time.monotonic()
        self._state_stamp = stamp if stamp > 0 else now_seconds(self)

    def on_estop(self, msg: Bool, info) -> None:
        """Engage (stop now, from this callback) or release the latched e-stop.

        ``info`` (rclpy passes the message info to a callback that takes two arguments; one
        with a default would get the message alone) makes a message heard on both
        subscriptions count once.
        """
        key = (info["source_timestamp"], info["publication_sequence_number"], bool(msg.data))
        if key in self._estop_seen:
            return
        self._estop_seen[key] = None
        if len(self._estop_seen) > 64:
            self._estop_seen.popitem(last=False)
        executor = self.chunk_executor
        if executor is None:  # released under us (cleanup)
            return
        if msg.data:
            # the stop now, from here, unless the e-stop process sent it: whichever of this
            # tick and the control thread's comes first sends it, once, braking from the last
            # command (or the home move); under the send lock, so that no command decided
            # before it is published after it
            with self._send_lock:
                now = now_seconds(self)
                by_guard = self.estop_guard is not None and self.estop_guard.engaged
                changed = executor.estop(True, now)
                if not by_guard:
                    command = executor.tick(now, self.measured_q, self._state_stamp,
                                            time.monotonic() - self._state_arrival)
                    by_guard = self.backend.send(command) is False  # it was first after all
                if by_guard:
                    self._adopt_guard_stop()
            if self.home_backend is not None:
                self.home_backend.cancel()
            if changed and by_guard:
                self.get_logger().error("E-STOP engaged: arm stopped by the e-stop process, "
                                        "holding until released")
            elif changed:  # this node's reaction: from its DDS reader to the stop sent
                received = info["received_timestamp"] * 1e-9
                self.get_logger().error(
                    f"E-STOP engaged: arm stopped, holding until released (stop sent "
                    f"{(time.time() - received) * 1e3:.1f} ms after the message arrived)")
            return
        with self._send_lock:
            now = now_seconds(self)
            self._follow_guard(now)  # an engage only the e-stop process has heard yet
            released = executor.estop(False, now)
            if released and self.estop_guard is not None:
                self._to_guard("release", info["source_timestamp"])
        if released:
            self.get_logger().warning("e-stop released: waiting for chunks observed from now "
                                      "on; streaming resumes from the measured position")
        else:
            self.get_logger().warning("e-stop release ignored: no e-stop was engaged",
                                      throttle_duration_sec=5.0)

    def _follow_guard(self, now: float) -> None:
        """Follow the e-stop process (under the send lock).

        Go on from the trajectory in force if it held tracks back; engage here too if it
        stopped the arm first.
        """
        guard = self.estop_guard
        if guard is None:
            return
        held_back = guard.held_back
        if held_back != self._held_back:
            self._held_back = held_back
            try:
                self.chunk_executor.adopt_reference(*guard.reference())
            except GuardLost:
                pass   # it is gone: the next send says so, and this node publishes
        if not guard.engaged or self.chunk_executor.engaged:
            return
        self.chunk_executor.estop(True, now)
        self._adopt_guard_stop()
        if self.home_backend is not None:
            self.home_backend.cancel()
        self.get_logger().error("E-STOP engaged: arm stopped by the e-stop process, holding "
                                "until released")

    def _adopt_guard_stop(self) -> None:
        """The e-stop process's stop is the controller's reference from now on."""
        try:
            stamp, points = self.estop_guard.stop()
        except GuardLost:
            return
        self.chunk_executor.adopt_stop(stamp, points)

    def _to_guard(self, what: str, *args) -> None:
        """Tell the e-stop process (``release`` / ``forget``), if it is still there."""
        try:
            getattr(self.estop_guard, what)(*args)
        except GuardLost as err:
            self.get_logger().error(f"{err}: this node stops the arm itself",
                                    throttle_duration_sec=5.0)

    def on_scene_reset(self, msg: Empty) -> None:
        """The world was reset (sim_node's reset_task): hold where the arm is now.

        Plans and the controller's reference from before the reset are void.
        """
        with self._send_lock:
            self.chunk_executor.scene_reset(now_seconds(self))
            if self.estop_guard is not None:  # the reference from before it is void
                self._to_guard("forget")
            if hasattr(self.backend, "forget"):
                self.backend.forget()
        self.get_logger().info("scene reset: plans dropped, holding where the arm is")

    def on_instruction(self, msg: String) -> None:
        """A new instruction: drop the chunks planned for the old one."""
        if msg.data == self._instruction:
            return  # republished (the sim repeats it for late joiners)
        self._instruction = msg.data
        self.chunk_executor.set_instruction_changed(now_seconds(self))
        self.get_logger().info(f"instruction: '{msg.data}' (pending chunks flushed)")

    def on_go_home(self, request, response):
        """Move to the robot's home pose slowly, with streaming paused meanwhile."""
        if not self._active:
            response.success = False
            response.message = "executor_node is inactive (activate it first)"
            return response
        if self.chunk_executor.engaged:
            response.success, response.message = False, "e-stop engaged"
            return response
        if self.measured_q is None:
            response.success, response.message = False, "no joint state yet"
            return response
        now = now_seconds(self)
        if self.home_backend is not None:
            # planned and executed on MoveItPy's worker thread: the e-stop and deactivate
            # cancel it while it moves; streaming resumes when it ends
            self.chunk_executor.pause(now, float("inf"), "going home (MoveItPy)")
            if self.estop_guard is not None:  # MoveIt moves the arm: our reference is void
                self._to_guard("forget")
            future = self.home_backend.move_to_async(self.robot.home)
            future.add_done_callback(self._moveit_home_done)
            response.success, response.message = True, "MoveItPy: planning and executing home"
            return response
        # slow and straight in joint space; streaming pauses for the move, and afterwards the
        # arm holds home (no stale pose comes back) until a chunk observed after it arrives
        seconds = self.chunk_executor.home_move(now, self.robot.home, self.measured_q,
                                                self.p["home_speed"])
        # from where the reference is to home at rest (a cubic); an e-stop or deactivate
        # replaces it with a stop that brakes from where this move has got to
        stamp, points = self.chunk_executor.motion_points()
        self.home_trajectory.publish(stamp, *zip(*points))
        response.success, response.message = True, f"going home in {seconds:.1f} s"
        return response

    def _moveit_home_done(self, future) -> None:
        """MoveItPy's home move ended (its worker thread): say how, resume streaming."""
        result = future.result()
        log = self.get_logger()
        (log.info if result.success else log.error)(
            f"go_home (MoveItPy): {result.status} {result.message}".rstrip())
        if self.chunk_executor is not None and not self.chunk_executor.engaged:
            self.chunk_executor.resume(now_seconds(self))

    # ------------------------------------------------------------------ control loop

    def _control_loop(self) -> None:
        period = self.chunk_executor.config.period
        deadline, last = time.perf_counter(), None
        while not self._stop.is_set():
            start = time.perf_counter()
            if last is not None:
                self._periods.append(start - last)
            last = start
            self._tick()
            deadline += period
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                deadline = time.perf_counter()  # overrun: no burst of catch-up ticks

    def _tick(self) -> None:
        with self._send_lock:  # decided and published before any e-stop's stop, or after it
            now = now_seconds(self)
            age = time.monotonic() - self._state_arrival
            self._follow_guard(now)
            command = self.chunk_executor.tick(now, self.measured_q, self._state_stamp, age)
            halted = getattr(self.backend, "halted", None)
            if halted and command.kind == "track":  # Servo halted itself: send zeros, say why
                command.kind, command.reasons = "halted", (f"MoveIt Servo halted: {halted}",)
            if command.kind == "track" or command.stop or not self.chunk_executor.joint_space:
                if self.backend.send(command) is False:  # the e-stop process stopped the arm
                    self._follow_guard(now)
        if self.executed is not None:
            if command.kind == "track":
                self.executed.add(command.arm)
            elif command.stop:
                self.executed.clear()
        self.gripper.send(command.gripper, now)
        if command.kind != self._reported_kind:  # say so now, not at the next 1 Hz report
            self._reported_kind = command.kind
            if command.kind in ("no_state", "estop", "halted"):
                self.get_logger().error(f"{command.kind}: {command.reasons[0]}")
            self.publish_diagnostics()

    def publish_diagnostics(self, lifecycle: str | None = None) -> None:
        """Lifecycle state, counters, command state and period jitter on /diagnostics.

        ``lifecycle``: the state being entered (during a transition); default the current one.
        """
        lifecycle = lifecycle or lifecycle_state(self)
        executor = self.chunk_executor
        if executor is None:  # unconfigured (or finalized): nothing built, nothing commanded
            self.diagnostics.publish(ERROR if self._error else WARN,
                                     f"{lifecycle}: {self._error or 'not configured'}",
                                     {"lifecycle_state": lifecycle})
            return
        status = executor.status(now_seconds(self))
        periods = np.asarray(self._periods) * 1e3
        values = {"lifecycle_state": lifecycle, "state": status.last_kind,
                  "reason": status.reason, "estop": status.estop,
                  "active_chunks": status.active_chunks,
                  "seconds_since_chunk": status.seconds_since_chunk or -1.0}
        if periods.size:
            values.update(period_p50_ms=float(np.percentile(periods, 50)),
                          period_p99_ms=float(np.percentile(periods, 99)))
        values.update(status.counters)
        if self.estop_guard is not None:  # without it e-stops are still handled, in-process
            values["estop_process"] = "running" if self.estop_guard.alive else "gone"
            values["tracks_held_back"] = self._held_back
        values.update({f"safety_{k}": v for k, v in status.safety_counters.items()})
        level = ERROR if status.estop else _LEVEL.get(status.last_kind, WARN)
        message = "e-stop" if status.estop else status.last_kind
        if status.last_kind in ("no_state", "paused"):
            message = f"{status.last_kind}: {status.reason}"
        if self.estop_guard is not None and not self.estop_guard.alive:
            level = max(level, WARN)
            message += " (e-stop process gone: e-stops are handled in this process)"
        if lifecycle != "active":
            level = max(level, WARN)
            message = "e-stop" if status.estop else "holding, not streaming (activate to follow "\
                "chunks)"
        self.diagnostics.publish(level, f"{lifecycle}: {message}", values)

    def close(self) -> None:
        """Stop the control thread, hold the arm braking to rest, end the e-stop's thread."""
        if self.backend is not None:
            self._hold()
            if hasattr(self.backend, "close"):  # (position: after it has sent the stop out)
                self.backend.close()
        self._stop_stream()
        if self.estop_listener is not None:
            self.estop_listener.destroy()
            self.estop_listener = None
        if self.estop_guard is not None:  # and process
            self.estop_guard.close()
            self.estop_guard = None


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros executor_node``."""
    import sys

    # the e-stop thread waits at most this long for the interpreter lock while another thread
    # runs Python (default 5 ms): a flood of chunks must not add that to the e-stop's path
    sys.setswitchinterval(0.0005)
    return run_node(ExecutorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
