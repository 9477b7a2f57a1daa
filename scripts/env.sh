# Source this file to get the venv, the built package and the runtime settings in your shell:
#   source scripts/env.sh
_roboalign_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_roboalign_venv="${ROBOALIGN_VENV:-$HOME/.venvs/roboalign_ros}"
export VIRTUAL_ENV="$_roboalign_venv"
export PATH="$_roboalign_venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_roboalign_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_roboalign_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$_roboalign_root/install/setup.bash"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"   # CPU rendering; EGL also works where available
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-$MUJOCO_GL}"
export HF_HUB_OFFLINE=1                   # models come from local directories only
# large images between local processes through shared memory (see the file's comment)
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_roboalign_root/config/fastdds.xml}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _roboalign_root _roboalign_venv
