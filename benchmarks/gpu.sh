#!/usr/bin/env bash
# The GPU benchmark in one run of at most 8 minutes on one GPU machine without internet (docs/performance.md,
# "GPU"): autoseg's training rate with CPU and on-GPU augmentation, inference with and without TTA, peak GPU
# memory, and the same for nnU-Net v2 when its packages are there.
#
#   bash benchmarks/gpu_wheels.sh                 # here, once: the wheels the GPU image lacks, into .whl/
#   bash benchmarks/gpu.sh [--dry-run] [OUT]      # there (carry .whl); OUT defaults to $OUT, else benchmarks/work/gpu
#   python benchmarks/gpu.py --write-doc OUT/gpu_results.json   # here: the table into docs/performance.md
#
# Wheels found in $WHEELS (default .whl/, or .whl/wheels.tar.xz) are installed with --no-index, only those whose
# distribution python3 lacks, into a folder put on PYTHONPATH; nnU-Net's rows say "not measured" when nnunetv2
# does not import. --dry-run: tiny cases and plan on the CPU, every stage once (tests/test_gpu_script.py).
# PYTHON picks the interpreter (default python3), GPU_BUDGET the seconds for the measurements (default 420).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
dry=()
out="${OUT:-}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry=(--dry-run) ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) out="$arg" ;;
    esac
done
out="${out:-$repo/benchmarks/work/gpu}"
mkdir -p "$out"

wheels="${WHEELS:-$repo/.whl}"
if [ -f "$wheels/wheels.tar.xz" ]; then   # gpu_wheels.sh packs them: loose, they would not fit the 64 MiB carry
    unpacked="$(mktemp -d)"
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$wheels/wheels.tar.xz" "$unpacked"
    wheels="$unpacked"
fi
if compgen -G "$wheels/*.whl" >/dev/null; then
    site="${GPU_SITE:-$(mktemp -d)}"
    # only what this python lacks: the machine's torch, numpy, scipy... are never shadowed
    mapfile -t missing < <("$py" - "$wheels" <<'EOF'
import importlib.metadata as md
import pathlib
import sys

for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        md.version(wheel.name.split("-")[0])
    except md.PackageNotFoundError:
        print(wheel)
EOF
)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "gpu.sh: installing ${#missing[@]} carried wheel(s) into $site"
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${missing[@]}" \
            || echo "gpu.sh: installing the wheels failed; going on with what is installed" >&2
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
budget=()
if [ -n "${GPU_BUDGET:-}" ]; then budget=(--budget "$GPU_BUDGET"); fi
exec "$py" "$repo/benchmarks/gpu.py" "$out" "${dry[@]}" "${budget[@]}"
