#!/usr/bin/env bash
# LeRobot's own tools on our datasets, in a venv of LeRobot's own (its pins and ours cannot
# share one: torch, av, datasets, diffusers). Installs it on first use (several GB: PyPI's
# torch comes with CUDA), then runs scripts/lerobot_check.py there: PASS/FAIL per check.
#   bash scripts/lerobot_check.sh [--out runs/lerobot_check]
set -euo pipefail
cd "$(dirname "$0")/.."
LEROBOT_VERSION="${LEROBOT_VERSION:-0.6.1}"     # the newest on the index (2026-12)
VENV="${LEROBOT_VENV:-$HOME/.venvs/lerobot-$LEROBOT_VERSION}"
PYTHON312="${PYTHON312:-$(command -v python3.12 || echo "$HOME/.pyenv/versions/3.12.1/bin/python")}"
if [ ! -x "$VENV/bin/lerobot-train" ]; then
  echo "[lerobot_check] creating $VENV (LeRobot $LEROBOT_VERSION needs Python >= 3.12)"
  "$PYTHON312" -m venv "$VENV"
  "$VENV/bin/pip" install -q "lerobot[training,diffusion]==$LEROBOT_VERSION"
fi
bash scripts/setup.sh   # ours up to date (idempotent): the checks run our commands
set +u; source scripts/env.sh; set -u   # our venv runs the checks; LeRobot's runs LeRobot
exec python scripts/lerobot_check.py --lerobot-venv "$VENV" "$@"
