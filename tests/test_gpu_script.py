"""benchmarks/gpu.sh and the end-to-end training stage of benchmarks/run.py, exercised on the CPU.

The GPU numbers come from a GPU machine (docs/performance.md); here every stage runs once in its dry-run
mode (tiny synthetic cases and plan), and the carried-wheel installation is checked offline with two
hand-made wheels: one the Python lacks (installed) and a broken "numpy" (present, so never installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NNUNET_PY = REPO / "benchmarks" / ".venv-nnunet" / "bin" / "python"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "stages"))
import _common  # noqa: E402
import gpu  # noqa: E402


def _wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """A minimal pure-Python wheel holding package ``name`` with ``source`` as its __init__."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": source,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_render_states_the_machine_and_each_tools_cells():
    doc = {"started": "2026-12-02T10:00:00", "data": "2 synthetic cases",
           "machine": {"cpu": {"model": "X", "avx2": True, "avx512": False, "bf16": False}, "cores": 16,
                       "python": "3.12", "torch": "2.11", "commit": "abc", "gpu": "H200", "gpu_memory_gb": 139.8,
                       "cuda": "13.0"},
           "settings": {"dry_run": False, "iters": 40, "workers": 12, "nnunet_compile": False,
                        "plan": "patch 128x128x128, batch 2"},
           "results": [{"row": "train_cpu", "tool": "autoseg", "iters_per_s": 5.0, "cpu_use": 3.21, "gpu_peak_gb": 9.5},
                       {"row": "inference", "tool": "autoseg", "seconds": 2.5, "gpu_peak_gb": 3.0},
                       {"row": "train_cpu", "tool": "nnunet", "skipped": "nnunetv2 not importable"}]}
    text = gpu.render(doc)
    assert "H200 (139.8 GiB), CUDA 13.0" in text and "AVX2 yes, AVX-512 no, native bf16 (AVX512-BF16/AMX) no" in text
    assert "| training it/s, augmentation in 12 CPU worker processes | **5 it/s** (3.2 cores busy, GPU peak 9.5 GB) " \
           "| not measured: nnunetv2 not importable |" in text
    assert "| **2.5 s** (GPU peak 3 GB) |" in text and "| no such option |" in text
    assert set(_common.cpu_features()) == {"model", "avx2", "avx512", "bf16"}


@pytest.mark.slow
def test_gpu_script_dry_run_measures_every_stage_and_installs_only_missing_wheels(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    made = [_wheel(wheels, "gpuprobe", "1.0", "VALUE = 1\n"),
            _wheel(wheels, "numpy", "0.0.1", "raise ImportError('the carried numpy shadowed the installed one')\n")]
    with tarfile.open(wheels / "wheels.tar.xz", "w:xz") as t:   # packed, as gpu_wheels.sh leaves them
        for w in made:
            t.add(w, arcname=w.name)
            w.unlink()
    nnunet = NNUNET_PY if NNUNET_PY.is_file() else Path(sys.executable)
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS": str(wheels), "GPU_SITE": str(tmp_path / "site"),
           "NNUNET_PYTHON": str(nnunet), "TMPDIR": str(tmp_path), "GPU_BUDGET": "3000"}
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tmp_path / "site" / "gpuprobe" / "__init__.py").is_file()
    assert not (tmp_path / "site" / "numpy").exists()
    doc = json.loads((out / "gpu_results.json").read_text())
    by = {(r["tool"], r["row"]): r for r in doc["results"]}
    for row in ("train_cpu", "train_device"):
        r = by["autoseg", row]
        assert r["iters_per_s"] > 0 and r["cpu_use"] > 0 and r["gpu_peak_gb"] is None, r
        assert r["augment_on"] == ("device" if row == "train_device" else "cpu") and r["plan"] == "patch [16, 16, 16] batch 2"
    for row in ("inference", "inference_tta"):
        assert by["autoseg", row]["seconds"] > 0, by["autoseg", row]
    for row in ("train_cpu", "inference", "inference_tta"):
        r = by["nnunet", row]
        if nnunet == Path(sys.executable):   # this Python has no nnunetv2: the rows say so, the run goes on
            assert "nnunetv2 not importable" in r["skipped"]
        else:
            assert (r.get("iters_per_s") or r.get("seconds") or 0) > 0, r
    text = (out / "gpu_results.md").read_text()
    assert "no GPU: a dry run on the CPU" in text and text.count("\n| ") == 5


@pytest.mark.slow
def test_run_py_dry_run_reports_the_training_loop_with_the_cpu_features(tmp_path):
    env = {**os.environ, "NNUNET_PYTHON": str(tmp_path / "no-nnunet" / "python")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--against", "nnunet", "--dry-run",
                           "--stages", "train_loop", "--work", str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "CPU features: AVX2 " in proc.stdout and "native bf16 (AVX512-BF16/AMX) " in proc.stdout
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| end-to-end training"))
    assert " it/s | - |" in row and "no-nnunet" in row   # nnU-Net's venv is missing: named, not measured
    assert "| train_loop CPU use" in proc.stdout
    results = json.loads(next((tmp_path / "work").glob("results-*.json")).read_text())["results"]
    autoseg = next(r for r in results if r["tool"] == "autoseg")
    assert autoseg["iters"] == 2 and autoseg["plan"] == "patch [16, 16, 16] batch 2" and autoseg["cpu_use"] > 0
