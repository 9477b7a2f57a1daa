#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: apt packages, a venv with the pinned Python and ROS 2
# wheels, the CMake export fix for those wheels, and a colcon build of this package.
# A second run on a ready machine only checks stamps and takes a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Outside the source tree: CMake refuses exported include paths (numpy's) inside the package.
VENV="${ROBOALIGN_VENV:-$HOME/.venvs/roboalign_ros}"
PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(libosmesa6 libegl1 libgl1 libusb-1.0-0 libxml2-utils cmake g++ make)
# the run-time libraries of the prebuilt ros2_control (its README), where that tree is present:
# make test-controllers runs the real controllers from it
RC_VENDOR="${ROBOALIGN_ROS2_CONTROL:-$ROOT/../shared/vendor/ros2_control_kilted}"
if [ -f "$RC_VENDOR/env.sh" ]; then
  APT_PACKAGES+=(libcap2 libconsole-bridge1.0 libdw1 libelf1 libfmt9 libtinyxml2-9 libtinyxml2.6.2v5
                 liburdfdom-model3.0)
fi

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# 1. System packages: MuJoCo CPU rendering (OSMesa/EGL), pyrealsense2 (libusb), xmllint, build tools.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The venv. torch is installed first and pinned: an unpinned torch pulls GBs of CUDA wheels.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  touch "$VENV/COLCON_IGNORE"  # the ROS wheels ship package.xml files colcon must not crawl
fi
req_hash="$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]; then
  log "installing pinned Python dependencies (first run: a few minutes)"
  mkdir -p "$ROOT/log"
  { "$VENV/bin/pip" install --disable-pip-version-check "torch==2.13.0" &&
    "$VENV/bin/pip" install --disable-pip-version-check -r "$ROOT/requirements/ros.txt" \
      -r "$ROOT/requirements/base.txt" -c "$ROOT/requirements/lock.txt"; } \
    >"$ROOT/log/pip-install.txt" 2>&1 || { grep -v "is ignored" "$ROOT/log/pip-install.txt" | tail -n 40; exit 1; }
  echo "$req_hash" >"$VENV/.requirements.sha256"
fi

# 3. The ROS message wheels export CMake paths of the machine they were built on; point them
#    at this venv's Python headers and numpy (ENVIRONMENT.md, trap 1). Idempotent.
py_include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_include="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
mapfile -t stale < <(grep -l "/opt/python/cp3" "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
if ((${#stale[@]})); then
  log "fixing CMake exports of ${#stale[@]} message packages"
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_include}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${py_include}#g" \
    "${stale[@]}"
fi

# 4. colcon build (symlink install: Python edits are live). Rebuild only when the interfaces,
#    the build files or the set of installed files change.
build_hash="$(cd "$ROOT" && { cat package.xml CMakeLists.txt msg/* srv/*;
  find roboalign_ros launch config urdf scripts -type f -not -path '*/__pycache__/*' | sort; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$ROOT/install/.build.sha256" 2>/dev/null)" != "$build_hash" ]; then
  log "colcon build"
  (
    cd "$ROOT"
    export PATH="$VENV/bin:$PATH" CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
    export Python3_EXECUTABLE="$VENV/bin/python"
    mkdir -p "$ROOT/log"
    colcon --log-base "$ROOT/log" build --base-paths "$ROOT" --build-base "$ROOT/build" \
      --install-base "$ROOT/install" --symlink-install \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      --event-handlers console_direct+ >"$ROOT/log/colcon-build.txt" 2>&1 \
      || { tail -n 60 "$ROOT/log/colcon-build.txt"; exit 1; }
  )
  echo "$build_hash" >"$ROOT/install/.build.sha256"
fi
log "ready: source scripts/env.sh"
