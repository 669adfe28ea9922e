#!/usr/bin/env bash
# Create .venv and install dasd into it (editable, with the test extra).
#
# torch: an already importable torch is kept. Otherwise we install ${DASD_TORCH:-torch==2.13.0}
# before dasd, so that pip does not resolve a bare "torch" to a multi-GB CUDA build on a CPU
# machine. GPU users: install the torch build you want first (or set DASD_TORCH), then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install --quiet "${DASD_TORCH:-torch==2.13.0}"
fi
"$VPY" -m pip install --quiet -e ".[test]"
