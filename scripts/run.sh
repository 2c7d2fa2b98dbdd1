#!/usr/bin/env bash
# Set up (if needed) and run musicgen-bridge with the given arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec musicgen-bridge "$@"
