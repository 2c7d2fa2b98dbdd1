#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: Python tests, then the device's JavaScript tests. Node is
# required: the device's tests always run, and without node this fails loudly instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # as root it installs Node.js too
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "scripts/test.sh: node and npm are required for the Max for Live device's tests (max_for_live/test)." >&2
  echo "Install Node.js 20 or later (https://nodejs.org, or your package manager), then run this again." >&2
  exit 1
fi
. .venv/bin/activate
python -m pytest -q "$@"
# acorn (the ES5 check) is a pinned dev dependency: install it from the lock file when it is missing.
if [ ! -d max_for_live/node_modules ]; then
  (cd max_for_live && npm ci --no-audit --no-fund)
fi
(cd max_for_live && node --test)
