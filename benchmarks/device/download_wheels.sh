#!/usr/bin/env bash
# Fill .device/ (ignored by git) with what the GPU check needs on a device machine that has no
# network: wheels of kldm's dependencies that its image lacks, for its Python 3.12 on x86-64, and
# the MP-20 rows the check reads (/work/shared/data is not in the repository, so it does not
# travel). Run from anywhere, where pip can reach PyPI:
#
#     benchmarks/device/download_wheels.sh [DATA_DIR]      # DATA_DIR default: /work/shared/data
#
# The device image already holds torch (never replaced), numpy, scipy, pandas, matplotlib,
# networkx, sympy, requests, joblib, tabulate, tqdm, typer, rich, safetensors, huggingface-hub,
# lxml and pytest (the device tool's KINDS.md). What kldm imports on top of those, found by
# tracing `kldm generate`, `kldm evaluate csp` and `kldm train`: pymatgen, pymatgen-core, monty,
# orjson, ruamel.yaml, spglib. Two small pure-Python requirements of pymatgen-core that those
# commands never import (uncertainties, palettable) come too, as insurance; plotly (~10 MB) and
# bibtexparser 1.x (no wheel on PyPI), never imported either, do not. ase (extXYZ output) comes
# for `--format extxyz`.
# Versions are those this project's CPU environment runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA="${1:-/work/shared/data}"
WHEELS="$ROOT/.device/wheels"
ROWS="$ROOT/.device/data"
PYTHON="${PYTHON:-python3}"
PACKAGES=(
    pymatgen==2026.10.24 pymatgen-core==2026.10.16 monty==2026.10.21 orjson==3.13.0
    ruamel.yaml==0.19.1 spglib==2.8.0 ase==3.29.0 uncertainties==3.2.3 palettable==3.3.3
)

rm -rf "$WHEELS"
mkdir -p "$WHEELS" "$ROWS"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}" 2>&1 \
    | grep -v "^WARNING: Location" || true
count=$(find "$WHEELS" -name '*.whl' | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
    echo "error: expected ${#PACKAGES[@]} wheels in $WHEELS, found $count" >&2
    exit 1
fi

# The rows: the first 200 MP-20 test structures (kldm evaluate csp, same-samples check) and
# 2,048 MP-20 training structures drawn with seed 0 (training throughput and smoke run, random
# paper-size models; a subset, so that the device parses it in seconds).
"$PYTHON" - "$DATA" "$ROWS" <<'PY'
import csv, gzip, random, sys
from pathlib import Path

data, rows = Path(sys.argv[1]), Path(sys.argv[2])
csv.field_size_limit(2**31 - 1)

def read(path):
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)

def write(path, header, body):
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)

header, test = read(data / "mp_20" / "test.csv.gz")
write(rows / "mp20_test_first200.csv.gz", header, test[:200])
header, train = read(data / "mp_20" / "train.csv.gz")
chosen = sorted(random.Random(0).sample(range(len(train)), 2048))
write(rows / "mp20_train_2048.csv.gz", header, [train[i] for i in chosen])
PY

echo "wheels: $count files, $(du -sb "$WHEELS" | cut -f1) bytes in $WHEELS"
echo "rows:   $(du -sb "$ROWS" | cut -f1) bytes in $ROWS"
tracked=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb "$ROOT/.device" | cut -f1)
echo "tracked tree $tracked + .device $carried = $((tracked + carried)) bytes" \
     "(the device tool's limit: $((64 * 1024 * 1024)))"
