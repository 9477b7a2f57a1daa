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

When no trajectory of ours is in force (none yet, one that ended over :data:`RECENT` ago, or a
MoveItPy move or a scene reset since), the guard leaves the stop to executor_node, which holds
the measured position.
Until the guard is up, and if it is ever gone, executor_node publishes and stops by itself.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from roboalign_ros.control.trajectory import braking_points, points_at

# A trajectory of ours that ended this recently is what the controller still holds (a stream
# sends one every period, and one at rest ends where it begins); an older one may have been
# replaced by another publisher, so the guard leaves that stop to executor_node.
RECENT = 0.25   # s


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
    acc_max: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    brake_time_min: float
    use_sim_time: bool


class GateState:
    """What the guard process knows: the last trajectory it published, and the e-stop.

    Not thread-safe: the guard process calls it under one lock.
    """

    def __init__(self, settings: GuardSettings):
        self.settings = settings
        self.reference: tuple[float, tuple] | None = None   # (stamp, (t, q, v) points)
        self.engaged = False
        self.released_after_ns = -1
        self.declined = ""   # why the last engage sent no stop

    def command(self, stamp: float, points, estop: bool = False) -> bool:
        """executor_node's trajectory: publish it (True) unless an e-stop is engaged."""
        if self.engaged:
            return False
        self.reference = (stamp, tuple(points))
        self.engaged = estop
        return True

    def engage(self, now: float, source_ns: int) -> tuple:
        """An e-stop published at ``source_ns``: the stop to publish.

        ``()``: none from us (:attr:`declined` says why, unless it was stopped already).
        """
        self.declined = ""
        if self.engaged or source_ns <= self.released_after_ns:
            return ()   # stopped already, or an engage older than the last release
        if self.reference is None:
            self.declined = "no trajectory of ours since the last reset or MoveItPy move"
            return ()
        stamp, points = self.reference
        if now - stamp - points[-1][0] > RECENT:
            self.declined = f"our last trajectory ended {now - stamp - points[-1][0]:.3f} s ago"
            return ()
        s = self.settings
        stop = braking_points(*points_at(points, now - stamp), np.array(s.acc_max),
                              np.array(s.lower), np.array(s.upper), s.brake_time_min)
        self.reference, self.engaged = (now, stop), True
        return stop

    def release(self, source_ns: int) -> None:
        """executor_node released the e-stop (an engage published before it is stale)."""
        self.engaged = False
        self.released_after_ns = max(self.released_after_ns, int(source_ns))

    def forget(self) -> None:
        """Something else moves the arm now (MoveItPy, a scene reset): no reference."""
        self.reference = None


class SharedStop:
    """What the guard tells executor_node: ready, engaged, and the stop it sent."""

    def __init__(self, joints: int, context):
        self.joints = joints
        self.lock = context.Lock()
        self._flags = context.RawArray("q", 3)          # [ready, engaged, subscriptions]
        self._stop = context.RawArray("d", 1 + 2 * (1 + 2 * joints))  # stamp, 2 points

    ready = property(lambda self: bool(self._flags[0]), doc="The guard process is up.")
    engaged = property(lambda self: bool(self._flags[1]), doc="The guard stopped the arm.")

    matched = property(lambda self: int(self._flags[2]),
                       doc="How many trajectory subscriptions its publisher has matched.")

    def set_ready(self, matched: int) -> None:
        """(guard) It is up, and its publisher has matched ``matched`` subscriptions."""
        self._flags[2] = matched
        self._flags[0] = 1

    def set_engaged(self, engaged: bool, stamp: float = 0.0, stop=()) -> None:
        """(guard) It engaged with ``stop`` at ``stamp``, or released."""
        if engaged:
            with self.lock:
                values = np.frombuffer(self._stop, dtype=np.float64)
                values[0] = stamp
                values[1:] = np.concatenate([np.concatenate(([t], q, v)) for t, q, v in stop])
        self._flags[1] = int(engaged)

    def stop(self, timeout: float = 0.5) -> tuple[float, tuple]:
        """``(stamp, points)`` of the guard's last stop."""
        if not self.lock.acquire(timeout=timeout):
            raise GuardLost(f"the e-stop process's lock stayed taken for {timeout} s")
        try:
            values = np.frombuffer(self._stop, dtype=np.float64).copy()
        finally:
            self.lock.release()
        n, row = self.joints, 1 + 2 * self.joints
        rows = (values[1:1 + row], values[1 + row:1 + 2 * row])
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

    def send(self, stamp: float, points, estop: bool = False) -> bool:
        """Hand it a trajectory to publish; False if an e-stop is engaged (it drops it).

        ``estop``: this is executor_node's own e-stop stop (the guard sends none after it).
        Raises :class:`GuardLost` if the process is gone.
        """
        if self.shared.engaged:
            return False
        item = ("command", float(stamp),
                tuple((float(t), tuple(map(float, q)), tuple(map(float, v)))
                      for t, q, v in points), estop)
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

    from roboalign_ros.nodes.backends import trajectory_msg
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
    state, lock = GateState(settings), threading.Lock()

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
                        _, stamp, points, estop = item
                        points = tuple((t, np.array(q), np.array(v)) for t, q, v in points)
                        if state.command(stamp, points, estop):
                            publish(stamp, points)
                            if estop:
                                shared.set_engaged(True, stamp, points[:2])
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
