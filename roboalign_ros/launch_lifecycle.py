"""Lifecycle wiring shared by the package's launch files (imports launch only when called)."""

from __future__ import annotations


def managed(node, autostart: str = "autostart") -> list:
    """Actions that drive lifecycle ``node`` from a launch file, in the order to list them.

    Configure the node once it is up; when it reaches inactive *from configuring* (only then:
    a later deactivate by hand stays deactivated), activate it if the launch argument
    ``autostart`` is true. With ``autostart:=false`` it waits, configured (inactive), for
    ``ros2 lifecycle set /<node> activate``.
    """
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.conditions import IfCondition
    from launch.events import matches_action
    from launch.substitutions import LaunchConfiguration
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    def change(transition_id, **kwargs):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id), **kwargs)

    return [
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[change(Transition.TRANSITION_ACTIVATE,
                             condition=IfCondition(LaunchConfiguration(autostart)))],
            handle_once=True)),
        node,
        change(Transition.TRANSITION_CONFIGURE),
    ]
