#!/usr/bin/env bash
# Download, here (with internet), the wheels benchmarks/gpu.sh installs on a GPU machine without internet:
#
#   bash benchmarks/gpu_wheels.sh [DEST]      # DEST defaults to .whl/ (git-ignored); then carry it with the repo
#
# The GPU image already holds python3 3.12 with torch, numpy, scipy, scikit-image, scikit-learn, pandas,
# matplotlib, seaborn, tifffile, tqdm, einops, timm, msgpack, httpx, rich and threadpoolctl, so by default only
# what autoseg and nnU-Net v2 2.8.1 need beyond that is fetched: 67 MB of wheels (SimpleITK alone 53 MB), packed
# with xz into wheels.tar.xz (about 45 MB) unless PACK=0. ALL=1 adds numpy, scipy, tqdm and nnU-Net's other needs
# for a bare Python (far larger). PY_VERSION (default 3.12) names the target Python; compiled wheels are manylinux
# x86_64; sdist-only pure-Python packages are built into py3-none-any wheels here. The versions are those of
# benchmarks/.venv-nnunet (setup_nnunet.sh), known to work together. gpu.sh installs only the wheels whose
# distribution the target Python lacks (--no-deps, into a folder on PYTHONPATH), so the machine's own torch and
# numpy are never shadowed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/../.whl}"
pyv="${PY_VERSION:-3.12}"
py="${PYTHON:-python3}"
mkdir -p "$dest"

# compiled: one wheel per platform tag set
binary=(simpleitk==2.5.7 nibabel==5.4.2 blosc2==4.14.1 ndindex==1.10.1 numexpr==2.14.2
        connected-components-3d==4.1.1)
# pure Python (some publish only an sdist)
pure=(batchgenerators==0.25.5 acvl-utils==0.2.6 nnunetv2==2.8.1 batchgeneratorsv2==0.3.6
      dynamic-network-architectures==0.4.4 graphviz==0.21 yacs==0.1.8)
if [ "${ALL:-0}" = 1 ]; then
    binary+=(numpy==2.4.6 scipy==1.17.1 scikit-image==0.26.0 scikit-learn==1.9.1 pandas==3.1.1 pillow==13.0.0
             matplotlib==3.11.2 msgpack==1.2.4 pyyaml==6.0.4 kiwisolver==1.5.1 contourpy==1.3.3)
    pure+=(tqdm==4.70.1 tifffile==2026.3.3 seaborn==0.13.2 einops==0.8.2 threadpoolctl==3.8.0 rich==15.0.0
           httpx==0.28.1 packaging==26.4 lazy-loader==0.6 networkx==3.6.1 imageio==2.38.2 joblib==1.6.0
           python-dateutil==4.0.0 pyparsing==3.3.3 cycler==0.12.1 fonttools==4.68.0 six==1.17.0 future==1.0.0)
fi

"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyv" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${binary[@]}"
"$py" -m pip wheel -q --no-deps -w "$dest" "${pure[@]}"

# The loose wheels come to about 67 MB, over the 64 MiB that travels with the working tree. Rewritten
# uncompressed and packed with xz they take about 45 MB (SimpleITK 53 -> 29 MB); gpu.sh unpacks them.
if [ "${PACK:-1}" = 1 ]; then
    "$py" - "$dest" <<'EOF2'
import pathlib
import sys
import zipfile

for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    stored = wheel.with_suffix(".stored")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_STORED)
    stored.replace(wheel)
EOF2
    (cd "$dest" && tar -cf - ./*.whl | xz -6 -T0 > wheels.tar.xz.tmp && mv wheels.tar.xz.tmp wheels.tar.xz && rm ./*.whl)
    ls -la "$dest/wheels.tar.xz"
else
    du -ch "$dest"/*.whl | tail -1
fi
echo "wheels in $dest: carry that folder (the working tree that travels, carried folders included, is limited to 64 MiB)"
