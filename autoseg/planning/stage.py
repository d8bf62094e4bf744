"""The plan stage as a Python API: verify, fingerprint (reused while the raw data is unchanged), plan, save.

``autoseg-plan`` only parses arguments and calls :func:`run_planning`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from autoseg.dataset import DatasetInfo, is_os_litter
from autoseg.errors import AutosegError, fail
from autoseg.fingerprint import Fingerprint, compute_fingerprint
from autoseg.paths import DatasetPaths
from autoseg.planning.planner import (DEFAULT_VRAM_GB, OUTLIER_FACTOR, check_options, check_request, detect_vram,
                                      outlier_cases, plan_dataset)
from autoseg.plans import Plans
from autoseg.verify import verify_dataset

SIGNATURE_KEY = "raw_signature"


def raw_signature(raw_dir: Path) -> str:
    """Hash of the names, sizes and modification times of dataset.json and the image and label files."""
    h = hashlib.sha256()
    files = [raw_dir / "dataset.json", *(f for sub in ("imagesTr", "labelsTr", "imagesTs")
                                         for f in sorted((raw_dir / sub).glob("*")) if not is_os_litter(f.name))]
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(raw_dir)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def current_fingerprint(paths: DatasetPaths, signature: str) -> Fingerprint | None:
    """``fingerprint.json`` if it was made from exactly these raw files, else None.

    It is written only after the dataset check passed, so a current one also means the files passed it.
    """
    if paths.fingerprint_json.is_file():
        try:
            old = Fingerprint.load(paths.fingerprint_json)
            if old.extra.get(SIGNATURE_KEY) == signature:
                return old
        except AutosegError:
            pass   # stale or from another version: compute it again
    return None


def fingerprint_for(paths: DatasetPaths, workers: int = 2) -> tuple[Fingerprint, bool]:
    """The dataset's fingerprint and whether it was reused: ``fingerprint.json`` is recomputed only when
    it is missing, unreadable or was made from a raw dataset that has changed since."""
    signature = raw_signature(paths.raw)
    old = current_fingerprint(paths, signature)
    if old is not None:
        return old, True
    fp = compute_fingerprint(paths.raw, workers=workers)
    fp = replace(fp, extra={**fp.extra, SIGNATURE_KEY: signature})
    fp.save(paths.fingerprint_json)
    return fp, False


def resolve_vram(vram_gb: float | None) -> tuple[float, str]:
    """The VRAM to plan for and where it came from: ``--vram``, the CUDA device, or nnU-Net's 8 GB default."""
    if vram_gb is not None:
        return float(vram_gb), "given with --vram"
    detected, source = detect_vram()
    if detected is not None:
        return detected, source
    return DEFAULT_VRAM_GB, f"{source}: nnU-Net's default 8 GB target, give --vram to change it"


def run_planning(paths: DatasetPaths, vram_gb: float | None = None, arch: str | None = None, base_features: int = 32,
                 max_features: int = 320, workers: int = 2, spacing: Sequence[float] | None = None,
                 warn: Callable[[str], None] | None = None, ct_window: Sequence[float] | None = None,
                 context_slices: int = 0) -> Plans:
    """Verify the raw dataset, fingerprint it, plan for the VRAM and write ``plans.json`` (atomically).

    The check and the fingerprint are skipped when the raw files are those they last passed (so
    replanning for another ``--vram`` on a large dataset takes a second, not a re-read of every voxel).
    ``warn`` gets one line per outlier case (spacing or shape far from the median): not an error, since
    the plan follows the median, but such a case may not survive resampling (see :func:`outlier_cases`).
    """
    check_request(vram_gb, arch, base_features, max_features, spacing)
    check_options(ct_window, context_slices)
    if current_fingerprint(paths, raw_signature(paths.raw)) is None:  # unchanged files passed the check already
        verify_dataset(paths.raw, workers=workers)
    info = DatasetInfo.load(paths.dataset_json)
    fp, reused = fingerprint_for(paths, workers)
    vram, source = resolve_vram(vram_gb)
    plans = plan_dataset(fp, info, vram, source, arch=arch, base_features=base_features, max_features=max_features,
                         spacing=spacing, ct_window=ct_window, context_slices=context_slices)
    note = ("Fingerprint reused and dataset check skipped: the raw files have not changed since they passed it."
            if reused
            else f"Fingerprint computed from {len(fp.sampled_cases)} sampled of {fp.num_training} case(s).")
    outliers = outlier_cases(fp, _volume_spacing(plans, fp))
    if outliers:
        note += (f" {len(outliers)} case(s) are more than {OUTLIER_FACTOR}x off the median spacing or shape on an "
                 f"axis ({', '.join(cid for cid, _ in outliers)}); the plan follows the median.")
    for cid, what in outliers:
        if warn is not None:
            warn(str(fail(paths.raw / "imagesTr" / f"{cid}_0000{info.file_ending}", what,
                          "check the spacing (mm) and size in its header, or remove the case")))
    plans = replace(plans, explanation=[note, *plans.explanation])
    plans.save(paths.plans_json)
    return plans


def _volume_spacing(plans: Plans, fp: Fingerprint) -> list[float]:
    """The planned (z, y, x) spacing: 3d_fullres's, or for a 2d-only plan the median slice spacing and 2d's."""
    if "3d_fullres" in plans.configurations:
        return plans.configurations["3d_fullres"].spacing
    return [float(np.median([c.spacing[0] for c in fp.cases])), *plans.configurations["2d"].spacing]


def summary_table(plans: Plans) -> str:
    """One line per configuration: spacing, patch, batch, stages, features, memory estimate."""
    rows = [("config", "spacing (mm)", "patch", "batch", "stages", "features", "arch", "memory (GiB)")]
    for name, c in plans.configurations.items():
        rows.append((name, " x ".join(f"{s:g}" for s in c.spacing), " x ".join(map(str, c.patch_size)),
                     str(c.batch_size), str(c.network.n_stages), f"{c.network.features[0]}..{c.network.features[-1]}",
                     c.network.arch, f"{c.memory_estimate_gb:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
