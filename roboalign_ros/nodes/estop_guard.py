"""The e-stop in a process of its own, which is also the only one that commands the arm.

rclpy runs every callback of a process under one interpreter lock, and taking a message holds
that lock for as long as the copy takes: a 10^6-dimension chunk (12 MB serialized) held it
for 20-60 ms on the 2-core machine, and an e-stop thread in the same process waits behind it
however it is scheduled. Sharing a lock with that process does not help either: the process
can lose its interpreter lock while holding ours (measured: e-stop p99 43 ms that way).

So the guard process publishes every trajectory to the joint_trajectory_controller:
executor_node hands it each one through a pipe (:meth:`EstopGuard.send`), and the guard
publishes them in order. The guard subscribes to the e-stop itself (Bools cannot be large);
on one it brakes from the last trajectory it published to rest
(:func:`~roboalign_ros.control.trajectory.braking_points`, as executor_node's own stop does),
publishes that stop, and drops every later trajectory until executor_node, which follows it
(:meth:`ChunkExecutor.adopt_stop`), releases the e-stop through the same pipe. One publisher
and one order: nothing decided before the e-stop can follow its stop.

When no trajectory of ours is in force (none yet, one that ended over
:data:`~roboalign_ros.control.estop_gate.RECENT` ago, or a
MoveItPy move or a scene reset since), the guard leaves the stop to executor_node, which holds
the measured position.
Until the guard is up, and if it is ever gone, executor_node publishes and stops by itself.
A track that reaches the guard too late to join the trajectory in force (either process starved
of CPU) is held back, and executor_node goes on from the one in force
(:class:`~roboalign_ros.control.estop_gate.GateState` holds the rules).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from roboalign_ros.control.estop_gate import GateLimits, GateState


class GuardLost(RuntimeError):
    """The e-stop process is gone (or its shared lock stayed taken)."""


@dataclass(frozen=True)
class GuardSettings:
    """What the guard process needs to know (topics resolved by executor_node)."""

    node_name: str
    namespace: str
    estop_topic: str
    trajectory_topic: str
    joint_names: tuple[str, ...]
    limits: GateLimits
    use_sim_time: bool


class SharedStop:
    """What the guard tells executor_node.

    Ready, engaged and the stop it sent; how many tracks it held back, and the trajectory in
    force when it last did.
    """

    MAX_POINTS = 3   # a track: now, end of the coast, rest

    def __init__(self, joints: int, context):
        self.joints = joints
        self.lock = context.Lock()
        self._flags = context.RawArray("q", 4)   # [ready, engaged, subscriptions, held back]
        size = 2 + self.MAX_POINTS * (1 + 2 * joints)   # stamp, point count, points
        self._stop = context.RawArray("d", size)
        self._reference = context.RawArray("d", size)

    ready = property(lambda self: bool(self._flags[0]), doc="The guard process is up.")
    engaged = property(lambda self: bool(self._flags[1]), doc="The guard stopped the arm.")

    matched = property(lambda self: int(self._flags[2]),
                       doc="How many trajectory subscriptions its publisher has matched.")
    held_back = property(lambda self: int(self._flags[3]),
                         doc="How many continuing tracks it held back so far.")

    def set_ready(self, matched: int) -> None:
        """(guard) It is up, and its publisher has matched ``matched`` subscriptions."""
        self._flags[2] = matched
        self._flags[0] = 1

    def set_engaged(self, engaged: bool, stamp: float = 0.0, stop=()) -> None:
        """(guard) It engaged with ``stop`` at ``stamp``, or released."""
        if engaged:
            self._write(self._stop, stamp, stop)
        self._flags[1] = int(engaged)

    def set_held_back(self, count: int, stamp: float, points) -> None:
        """(guard) ``count`` tracks held back so far; ``(stamp, points)`` is in force."""
        self._write(self._reference, stamp, points)
        self._flags[3] = count

    def stop(self, timeout: float = 0.5) -> tuple[float, tuple]:
        """``(stamp, points)`` of the guard's last stop."""
        return self._read(self._stop, timeout)

    def reference(self, timeout: float = 0.5) -> tuple[float, tuple]:
        """``(stamp, points)`` of the trajectory in force when it last held a track back."""
        return self._read(self._reference, timeout)

    def _write(self, buffer, stamp: float, points) -> None:
        rows = np.concatenate([np.concatenate(([t], q, v)) for t, q, v in points])
        with self.lock:
            values = np.frombuffer(buffer, dtype=np.float64)
            values[0], values[1] = stamp, len(points)
            values[2:2 + len(rows)] = rows

    def _read(self, buffer, timeout: float) -> tuple[float, tuple]:
        if not self.lock.acquire(timeout=timeout):
            raise GuardLost(f"the e-stop process's lock stayed taken for {timeout} s")
        try:
            values = np.frombuffer(buffer, dtype=np.float64).copy()
        finally:
            self.lock.release()
        n, width = self.joints, 1 + 2 * self.joints
        rows = values[2:2 + int(values[1]) * width].reshape(-1, width)
        return float(values[0]), tuple((float(r[0]), r[1:1 + n], r[1 + n:]) for r in rows)


class EstopGuard:
    """The guard process, seen from executor_node: start it, hand it trajectories, stop it."""

    def __init__(self, settings: GuardSettings):
        context = multiprocessing.get_context("spawn")
        self.settings = settings
        self.shared = SharedStop(len(settings.joint_names), context)
        child, self._conn = context.Pipe(duplex=False)
        self._lock = threading.Lock()   # several threads of executor_node send
        self.process = context.Process(target=_guard_main, args=(self.shared, settings, child),
                                       name=settings.node_name, daemon=True)
        self.process.start()
        child.close()

    @property
    def alive(self) -> bool:
        """Whether the guard process runs."""
        return self.process.is_alive()

    @property
    def ready(self) -> bool:
        """Whether it is up (subscribed and publishing); until then executor_node publishes."""
        return self.shared.ready and self.alive

    def reaches(self, subscriptions: int) -> bool:
        """Whether it is up and matched as many trajectory subscriptions as executor_node.

        (A volatile topic drops what is sent before matching.)
        """
        return self.ready and self.shared.matched >= subscriptions

    @property
    def engaged(self) -> bool:
        """Whether it stopped the arm for an e-stop executor_node has not released yet."""
        return self.shared.engaged

    def stop(self) -> tuple[float, tuple]:
        """``(stamp, points)`` of the stop it sent (after :attr:`engaged`)."""
        return self.shared.stop()

    @property
    def held_back(self) -> int:
        """How many continuing tracks it held back (see :class:`GateState`)."""
        return self.shared.held_back

    def reference(self) -> tuple[float, tuple]:
        """``(stamp, points)`` in force when it last held a track back."""
        return self.shared.reference()

    def send(self, stamp: float, points, estop: bool = False, continues: bool = False) -> bool:
        """Hand it a trajectory to publish; False if an e-stop is engaged (it drops it).

        ``estop``: this is executor_node's own e-stop stop (the guard sends none after it).
        ``continues``: a track going on from the last one; the guard holds it back if it no
        longer joins the trajectory in force (:attr:`held_back` counts them).
        Raises :class:`GuardLost` if the process is gone.
        """
        if self.shared.engaged:
            return False
        item = ("command", float(stamp),
                tuple((float(t), tuple(map(float, q)), tuple(map(float, v)))
                      for t, q, v in points), estop, continues)
        self._put(item)
        return True

    def release(self, source_ns: int) -> None:
        """The e-stop (published at ``source_ns``) was released: trajectories go out again."""
        self.shared.set_engaged(False)
        self._put(("release", int(source_ns)))

    def forget(self) -> None:
        """Something else moves the arm (MoveItPy, a scene reset): no stop from our past."""
        self._put(("forget",))

    def _put(self, item) -> None:
        try:
            with self._lock:
                self._conn.send(item)
        except OSError as err:  # BrokenPipeError: it is gone
            raise GuardLost(f"the e-stop process is gone ({err})") from err

    def close(self) -> None:
        """Stop the guard process (it also exits by itself when executor_node's ends)."""
        with self._lock:
            self._conn.close()   # EOF: it exits
        self.process.join(timeout=3.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _guard_main(shared: SharedStop, settings: GuardSettings, conn) -> None:
    """The guard process: publish executor_node's trajectories and the e-stop's stop."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import JointTrajectory

    from roboalign_ros.conversions import trajectory_msg
    from roboalign_ros.nodes.common import COMMAND_QOS, ESTOP_BEST_EFFORT_QOS, now_seconds

    try:  # ahead of the machine's other work where the OS allows (CAP_SYS_NICE, rlimit)
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = rclpy.create_node(
        settings.node_name, namespace=settings.namespace, context=context,
        use_global_arguments=False,
        parameter_overrides=[Parameter("use_sim_time", value=settings.use_sim_time)])
    pub = node.create_publisher(JointTrajectory, settings.trajectory_topic, COMMAND_QOS)
    state, lock = GateState(settings.limits), threading.Lock()

    def publish(stamp, points):
        pub.publish(trajectory_msg(settings.joint_names, stamp, *zip(*points)))

    def on_estop(msg: Bool, info) -> None:
        if not msg.data:
            return  # releases are executor_node's
        with lock:
            now = now_seconds(node)
            stop = state.engage(now, info["source_timestamp"])
            if stop:
                publish(now, stop)
                shared.set_engaged(True, now, stop)
        if stop:
            node.get_logger().error(
                f"E-STOP: stop sent {(time.time() - info['received_timestamp'] * 1e-9) * 1e3:.1f}"
                f" ms after the message arrived (e-stop process)")
        elif state.declined:
            node.get_logger().warning(f"e-stop: left to executor_node ({state.declined}): it "
                                      "holds where the arm is measured")

    for qos in (COMMAND_QOS, ESTOP_BEST_EFFORT_QOS):
        node.create_subscription(Bool, settings.estop_topic, on_estop, qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def serve():  # executor_node's trajectories, in order; EOF when it closes or is gone
        try:
            while True:
                item = conn.recv()
                with lock:
                    if item[0] == "command":
                        _, stamp, points, estop, continues = item
                        points = tuple((t, np.array(q), np.array(v)) for t, q, v in points)
                        now = now_seconds(node)
                        if state.command(stamp, points, estop, continues, now):
                            publish(stamp, points)
                            if estop:
                                shared.set_engaged(True, stamp, points[:2])
                        elif not state.engaged:   # held back: executor_node goes on from ours
                            shared.set_held_back(state.held_back, *state.reference)
                            node.get_logger().warning(
                                f"held back a track {now - stamp:.3f} s late: it would have "
                                f"jumped {state.gap:.4f} rad from the trajectory in force "
                                f"({state.held_back} so far)", throttle_duration_sec=1.0)
                    elif item[0] == "release":
                        state.release(item[1])
                    elif item[0] == "forget":
                        state.forget()
        except (EOFError, OSError):
            pass
        executor.shutdown(timeout_sec=0.5)
        context.try_shutdown()

    threading.Thread(target=serve, daemon=True).start()
    node.create_timer(0.05, lambda: shared.set_ready(pub.get_subscription_count()))
    try:
        executor.spin()
    except (ExternalShutdownException, KeyboardInterrupt):
        pass
    finally:
        node.destroy_node()
        context.try_shutdown()
