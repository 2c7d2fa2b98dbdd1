#!/usr/bin/env bash
# Idempotent setup for a fresh machine: system packages (when root), a venv in .venv, the project and its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for p in libportaudio2 jackd2 liblo-tools libsndfile1; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  # The device's tests run on Node.js (node --test, npm for the pinned ES5 parser).
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.setup-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (log: .venv/setup.log)" >&2
  log=.venv/setup.log
  pipi() { python -m pip install -q --disable-pip-version-check "$@" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }
  # A pinned torch takes the local CPU wheel where one is provided; unpinned would pull the CUDA build (gigabytes).
  python -c "import torch" 2>/dev/null || pipi "torch==${TORCH_VERSION:-2.13.0}"
  pipi -e ".[test]"
  # The native int8 kernel builds once per machine (~15 s); where it cannot, w8a8 runs on fbgemm and this says why.
  python -m engine.native >&2 || true
  touch "$stamp"
fi
