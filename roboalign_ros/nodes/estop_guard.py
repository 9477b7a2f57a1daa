"""The e-stop in a process of its own: nothing in executor_node's process can delay it.

rclpy runs every callback of a process under one interpreter lock, and taking a message holds
that lock for as long as the copy takes: a 10^6-dimension chunk (12 MB serialized) held it
for 20-60 ms on the 2-core machine, and an e-stop thread in the same process waits behind it
however it is scheduled. The guard process subscribes to the e-stop alone (Bools cannot be
large) and publishes the joint_trajectory_controller's stop itself.

The two processes share the controller's reference (the last trajectory sent and its stamp)
and one lock (:class:`SharedReference`):

- executor_node publishes every trajectory under the lock, unless the e-stop is engaged, and
  records it as the reference: a command decided before the e-stop never follows the stop;
- on an e-stop the guard, under the lock, brakes from that reference to rest
  (:func:`~roboalign_ros.control.trajectory.braking_points`, as executor_node's own stop
  does), publishes the stop, records it and marks the e-stop engaged; executor_node adopts
  that stop as its own (:meth:`ChunkExecutor.adopt_stop`) and alone releases the e-stop;
- when no trajectory of ours is moving the arm (none yet, ended, or a MoveItPy move or a
  scene reset since), the guard leaves the stop to executor_node, which holds the measured
  position; executor_node also stops the arm itself if the guard process is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from roboalign_ros.control.trajectory import braking_points, points_at

MAX_POINTS = 8   # a track has 3 points, a stop or a home move 2


class GuardLost(RuntimeError):
    """The e-stop process cannot be relied on (its lock stayed taken: it died holding it)."""


class SharedReference:
    """The controller's reference and the e-stop flag, shared by executor_node and the guard.

    Hold :attr:`lock` around reading and writing (a process-shared semaphore).
    """

    def __init__(self, joints: int, context=None):
        context = context or multiprocessing.get_context("spawn")
        self.joints = joints
        self.lock = context.Lock()
        # [engaged (0/1), released after (source stamp of the release, ns)]
        self._flags = context.RawArray("q", 2)
        # [stamp (s), number of points (0: no reference), points x (t, q..., v...)]
        self._points = context.RawArray("d", 2 + MAX_POINTS * (1 + 2 * joints))

    @contextmanager
    def locked(self, timeout: float = 0.5):
        """Hold the lock; :class:`GuardLost` if it stays taken (its holder died in it)."""
        if not self.lock.acquire(timeout=timeout):
            raise GuardLost(f"the e-stop process's lock stayed taken for {timeout} s")
        try:
            yield self
        finally:
            self.lock.release()

    @property
    def engaged(self) -> bool:
        """Whether an e-stop stopped the arm (the guard or executor_node) and is not released."""
        return bool(self._flags[0])

    @property
    def released_after_ns(self) -> int:
        """Source stamp (ns) of the last release: older engages are stale."""
        return int(self._flags[1])

    def record(self, stamp: float, points, engaged: bool = False) -> None:
        """The trajectory just sent (``(t, q, v)`` points from ``stamp``); under the lock."""
        points = list(points)
        if len(points) > MAX_POINTS:  # not ours to stop from: leave it to executor_node
            self._points[1] = 0
            return
        n, row = self.joints, 1 + 2 * self.joints
        for _, q, v in points:
            if len(q) != n or len(v) != n:
                raise ValueError(f"a trajectory point has {len(q)} positions and {len(v)} "
                                 f"velocities; the arm has {n} joints")
        values = np.frombuffer(self._points, dtype=np.float64)
        for i, (t, q, v) in enumerate(points):
            values[2 + i * row:2 + (i + 1) * row] = np.concatenate(([t], q, v))
        values[0], values[1] = stamp, len(points)
        if engaged:
            self._flags[0] = 1

    def forget(self) -> None:
        """Something else moves the arm now (MoveItPy, a scene reset): no reference."""
        with self.locked():
            self._points[1] = 0

    def reference(self) -> tuple[float, tuple]:
        """``(stamp, points)`` of the last trajectory sent (``()`` if none); under the lock."""
        count = int(self._points[1])
        n, row = self.joints, 1 + 2 * self.joints
        values = np.frombuffer(self._points, dtype=np.float64)
        points = tuple((float(r[0]), r[1:1 + n].copy(), r[1 + n:row].copy())
                       for r in (values[2 + i * row:2 + (i + 1) * row] for i in range(count)))
        return float(values[0]), points

    def release(self, source_ns: int) -> None:
        """executor_node released the e-stop; engages published before ``source_ns`` are stale."""
        with self.locked():
            self._flags[0] = 0
            self._flags[1] = max(int(self._flags[1]), int(source_ns))


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


def engage(shared: SharedReference, now: float, source_ns: int, publish, settings) -> tuple:
    """The guard's reaction to an e-stop published at ``source_ns``: the stop points it sent.

    ``()`` if it leaves the stop to executor_node. ``publish(stamp, points)`` sends one.
    """
    with shared.lock:
        if shared.engaged or source_ns <= shared.released_after_ns:
            return ()   # stopped already, or an engage older than the last release
        stamp, points = shared.reference()
        if not points or now - stamp > points[-1][0]:
            return ()   # no trajectory of ours is moving the arm
        stop = braking_points(*points_at(points, now - stamp), np.array(settings.acc_max),
                              np.array(settings.lower), np.array(settings.upper),
                              settings.brake_time_min)
        publish(now, stop)
        shared.record(now, stop, engaged=True)
        return stop


class EstopGuard:
    """Starts and stops the guard process (executor_node's side)."""

    def __init__(self, settings: GuardSettings):
        context = multiprocessing.get_context("spawn")
        self.settings = settings
        self.shared = SharedReference(len(settings.joint_names), context)
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_guard_main, args=(self.shared, settings, child),
                                       name=settings.node_name, daemon=True)
        self.process.start()
        child.close()

    @property
    def alive(self) -> bool:
        """Whether the guard process runs."""
        return self.process.is_alive()

    def close(self) -> None:
        """Stop the guard process (it also exits by itself when executor_node's ends)."""
        try:
            self._conn.send("exit")
        except OSError:
            pass
        self.process.join(timeout=3.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()


def _guard_main(shared: SharedReference, settings: GuardSettings, conn) -> None:
    """The guard process: subscribe to the e-stop, publish the stop, until told or orphaned."""
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

    def publish(stamp, points):
        pub.publish(trajectory_msg(settings.joint_names, stamp, *zip(*points)))

    def on_estop(msg: Bool, info) -> None:
        if not msg.data:
            return  # releases are executor_node's
        if engage(shared, now_seconds(node), info["source_timestamp"], publish, settings):
            node.get_logger().error(
                f"E-STOP: stop sent {(time.time() - info['received_timestamp'] * 1e-9) * 1e3:.1f}"
                f" ms after the message arrived (e-stop process)")

    for qos in (COMMAND_QOS, ESTOP_BEST_EFFORT_QOS):
        node.create_subscription(Bool, settings.estop_topic, on_estop, qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def watch_parent():  # "exit", or EOF when executor_node's process is gone
        try:
            conn.recv()
        except (EOFError, OSError):
            pass
        executor.shutdown(timeout_sec=0.5)
        context.try_shutdown()

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        executor.spin()
    except (ExternalShutdownException, KeyboardInterrupt):
        pass
    finally:
        node.destroy_node()
        context.try_shutdown()
