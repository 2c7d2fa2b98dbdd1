#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: Python tests, then the device's JavaScript tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
if [ -d max_for_live/test ] && command -v node >/dev/null; then
  (cd max_for_live && node --test)
fi
