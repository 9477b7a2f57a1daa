"""MoveItPy output: plan and execute whole motions (homing, resets); imports MoveIt lazily."""

from __future__ import annotations


class MoveItPyBackend:
    """Plan and execute with MoveItPy: used for going home and resets, not for streaming."""

    name = "moveit_py"

    def __init__(self, node, robot, planning_group: str = "arm"):
        try:
            from moveit.planning import MoveItPy
        except ImportError as exc:
            raise RuntimeError(
                "backend 'moveit_py' needs MoveIt 2 with moveit_py (ROS package `moveit_py`, "
                "e.g. `apt install ros-$ROS_DISTRO-moveit-py`) and a running move_group "
                f"configuration for {robot.name}; not found: {exc}") from exc
        self.robot, self.group = robot, planning_group
        self._moveit = MoveItPy(node_name=f"{node.get_name()}_moveit_py")
        self._arm = self._moveit.get_planning_component(planning_group)

    def move_to(self, joint_positions) -> bool:
        """Plan to joint positions (arm joints in config order) and execute; True on success."""
        from moveit.core.robot_state import RobotState

        state = RobotState(self._moveit.get_robot_model())
        state.joint_positions = dict(zip(self.robot.arm_joints, map(float, joint_positions)))
        self._arm.set_start_state_to_current_state()
        self._arm.set_goal_state(robot_state=state)
        plan = self._arm.plan()
        if not plan:
            return False
        self._moveit.execute(plan.trajectory, controllers=[])
        return True

    def send(self, command) -> None:  # pragma: no cover - guarded by the node
        """Not supported: MoveItPy plans whole motions."""
        raise RuntimeError("moveit_py plans and executes; it does not stream chunk commands")

    def stop(self) -> None:
        """Nothing to stream; MoveIt's own execution manager stops on its trajectories."""
