#!/usr/bin/env bash
# The real-controller tier: the conformance suite against a real ros2_control (controller_manager
# + joint_trajectory_controller + forward_command_controller, mock hardware, exact and lagging).
# Finds a sourced ROS 2 with ros2_control, or the prebuilt Kilted tree
# ($ROBOALIGN_ROS2_CONTROL, default ../shared/vendor/ros2_control_kilted). Without one it says
# so loudly and exits 0: the tier is skipped, not passed.
set -eo pipefail  # (no -u: colcon's setup.bash reads unset variables)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
setup="$(python - <<'PY'
from roboalign_ros.apps.ros2_control_rig import find_ros2_control
found = find_ros2_control()
print(f"{found.setup}\n{found.where}" if found else "")
PY
)"
if [ -z "$setup" ]; then
  printf '\n\033[1;33m%s\n%s\033[0m\n\n' \
    "SKIPPED: the real-controller tier (make test-controllers): no ros2_control installation" \
    "found (source a ROS 2 with ros2_control, or set ROBOALIGN_ROS2_CONTROL to the vendor tree)."
  exit 0
fi
echo "real-controller tier against: $(sed -n 2p <<<"$setup")"
eval "$(sed -n 1p <<<"$setup")"
cd "$ROOT"
exec python -m pytest -p no:cacheprovider -m controllers test/ "$@"
