"""``backend: position``: joint positions streamed to a forward position controller.

For ``position_controllers/JointGroupPositionController``, a forward_command_controller on the
arm's position interfaces (ros2_controllers, kilted: ``joint_group_position_controller.cpp``
sets the interface name to ``position``), or a ``forward_command_controller/
ForwardCommandController`` with ``interface_name: position``. What the controller does with a
message (``forward_command_controller/src/forward_controllers_base.cpp``): the subscription
drops one holding a non-finite value; ``update`` writes the newest message's values to the
joints in the order of its ``joints`` parameter, as they are, every cycle (no interpolation);
a message whose size is not the joint count makes ``update`` fail, and the controller_manager
then deactivates the controller (``ControllerManager::update``).

So this backend interpolates, as a JTC would: it keeps the executor's last trajectory (a
track: at the target with its velocity, coasting, braking to rest; a stop: braking from the
reference; the home move) and sends, every controller period, its position at that moment,
one finite value per arm joint. What it sends is the reference the executor's limits
(velocity, acceleration, workspace) were applied to. A stop is sent at once, then played out
to rest and held: the last safe position, repeated. After ``deactivate`` it plays the stop
out and then falls silent (the controller holds the last command), so another command source
can take the arm over, as with the JTC. There is no e-stop process on this path: the e-stop's
stop is sent from executor_node's e-stop thread.

The controller's ``joints`` must list the robot config's ``arm_joints`` in that order
(config/sim_arm_controllers.yaml, ``forward_position_controller``). Its topic is
``/<position.controller>/commands``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from std_msgs.msg import Float64MultiArray

from roboalign_ros.control.trajectory import points_at
from roboalign_ros.nodes.backends import register_backend
from roboalign_ros.nodes.common import COMMAND_QOS, now_seconds


class PositionBackend:
    """Samples the executor's trajectories every controller period onto a position topic."""

    name = "position"

    def __init__(self, node, robot, controller: str = "forward_position_controller"):
        self.topic = f"/{controller.strip('/')}/commands"
        self.period = 1.0 / robot.controller_rate   # one command per controller update
        self._node = node
        self._pub = node.create_publisher(Float64MultiArray, self.topic, COMMAND_QOS)
        self._lock = threading.Lock()     # one reference; samples leave in the order taken
        self._points: tuple | None = None  # (stamp, ((t, q, v), ...)) being sent
        self._streaming = False           # between activate and deactivate: send every period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="position", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the executor's side

    def send(self, command) -> bool:
        """Take a track or stop as the reference; a stop is sent at once (any other: nothing)."""
        if command.points and (command.kind == "track" or command.stop):
            at_once = command.stamp if command.stop else None
            self.publish(command.stamp, *zip(*command.points), now=at_once)
        return True

    def publish(self, stamp: float, times, positions, velocities, now: float | None = None
                ) -> None:
        """Follow the stamped trajectory from now on (``~/go_home`` too).

        ``now``: also send its position at that time at once (a stop must not wait a period).
        """
        points = tuple((float(t), np.asarray(q, float), np.asarray(v, float))
                       for t, q, v in zip(times, positions, velocities))
        with self._lock:
            self._points = (float(stamp), points)
            if now is not None:
                self._send(now)

    def sample(self, now: float) -> np.ndarray | None:
        """The position sent at ``now`` (None: no reference)."""
        with self._lock:
            return None if self._points is None else self._at(now)

    def activate(self) -> None:
        """Send the reference every period (executor_node is active).

        A trajectory that ended before is dropped: the arm may have been moved since; the
        executor's next command (a stop where the arm is) is sent instead.
        """
        with self._lock:
            if self._points is not None and not self._playing(now_seconds(self._node)):
                self._points = None
            self._streaming = True

    def deactivate(self) -> None:
        """Play the last trajectory out to rest, then send nothing (the controller holds it)."""
        self._streaming = False

    def forget(self) -> None:
        """The world was reset under the arm: the reference is void until the next command."""
        with self._lock:
            self._points = None

    def close(self, timeout: float = 2.0) -> None:
        """Send the last trajectory out to its end (at most ``timeout`` s), then stop (idempotent).

        A stop cut short would hold the arm mid-braking. Drops the publisher.
        """
        self._streaming = False
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._lock:
                if not self._playing(now_seconds(self._node)):
                    break
            self._stop.wait(self.period)
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
            self._pub = None

    # ------------------------------------------------------------------ sending

    def _at(self, now: float) -> np.ndarray:
        stamp, points = self._points
        return points_at(points, now - stamp)[0]

    def _send(self, now: float) -> None:
        """Publish the reference at ``now`` (under the lock)."""
        q = self._at(now)
        if self._pub is None or not np.all(np.isfinite(q)):
            return   # the controller would drop it ("Non-finite value received")
        self._pub.publish(Float64MultiArray(data=q.tolist()))

    def _playing(self, now: float) -> bool:
        """Whether a trajectory is still playing out at ``now`` (its end included)."""
        if self._points is None:
            return False
        stamp, points = self._points
        return now <= stamp + points[-1][0] + self.period

    def _loop(self) -> None:
        deadline = time.perf_counter()
        while not self._stop.is_set():
            now = now_seconds(self._node)
            with self._lock:
                if self._points is not None and (self._streaming or self._playing(now)):
                    self._send(now)
            deadline += self.period
            delay = deadline - time.perf_counter()
            if delay < 0:   # overrun: no burst of catch-up samples
                deadline, delay = time.perf_counter(), 0.0
            self._stop.wait(delay)


register_backend("position", ("joint_position",),
                 lambda node, robot, params, guard: PositionBackend(
                     node, robot, params["position.controller"]))
