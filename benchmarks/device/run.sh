#!/usr/bin/env bash
# The GPU check in one command, on a fresh device machine (see README.md beside this file):
#
#     benchmarks/device/run.sh [run_check.py options]      # results under $OUT
#
# Installs the carried wheels (.device/wheels, from download_wheels.sh) into /tmp/kldm-site,
# beside the machine's own torch, which is never replaced; kldm itself runs from src/ (no
# install). Then runs run_check.py and keeps its console output in $OUT/console.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-device-check}"
export OUT
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
SITE=/tmp/kldm-site
WHEELS="${WHEELS:-.device/wheels}"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: no wheels in $WHEELS; run benchmarks/device/download_wheels.sh here" \
         "and name .device in the run's carry" >&2
    exit 2
fi
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl >"$OUT/pip.log" 2>&1; then
    echo "error: pip could not install the carried wheels:" >&2
    tail -20 "$OUT/pip.log" >&2
    exit 2
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, pymatgen.core, kldm_cli.cli.main; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/console.log"
"$PYTHON" benchmarks/device/run_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/console.log"
