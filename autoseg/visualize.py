"""Overlay pictures: a few axial slices through the tumour, the segmentation painted in colour.

Used by ``autoseg-demo``, ``autoseg-predict --png`` and ``autoseg-evaluate --png/--report``.
Rendering uses matplotlib's Agg canvas directly (no pyplot, so no global figure state and no display).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from autoseg.errors import fail
from autoseg.io import atomic_path

# Colours by label value, BraTS meaning: 1 necrotic core, 2 oedema, 3 (2023+) / 4 (2019-2021) enhancing.
BRATS_COLOURS: dict[int, str] = {1: "#e41a1c", 2: "#4daf4a", 3: "#ffd92f", 4: "#ffd92f"}
BRATS_NAMES: dict[int, str] = {1: "necrotic core", 2: "oedema", 3: "enhancing", 4: "enhancing"}
_OTHER_COLOURS = ("#377eb8", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#17becf")


def label_colour(value: int) -> tuple[float, float, float]:
    """RGB colour for a label value: BraTS colours for 1-4, a fixed cycle for other values."""
    if value in BRATS_COLOURS:
        return to_rgb(BRATS_COLOURS[value])
    return to_rgb(_OTHER_COLOURS[value % len(_OTHER_COLOURS)])


def pick_slices(seg: np.ndarray, n_slices: int, ref: np.ndarray | None = None,
                image: np.ndarray | None = None) -> list[int]:
    """Axial (z) indices to show: spread over the tumour's extent, largest cross-section included. The
    reference's tumour when there is one (a poor prediction should not move the view), else the
    segmentation's; without any tumour, spread over the nonzero image (or the volume)."""
    mask = ref > 0 if ref is not None and ref.any() else seg > 0
    area = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if area.any():
        z = np.flatnonzero(area)
        lo, hi, best = int(z[0]), int(z[-1]), int(np.argmax(area))
    else:
        nz = np.flatnonzero(image.reshape(image.shape[0], -1).any(axis=1)) if image is not None else np.array([])
        lo, hi = (int(nz[0]), int(nz[-1])) if nz.size else (0, seg.shape[0] - 1)
        best = (lo + hi) // 2
    n = max(1, min(n_slices, hi - lo + 1))
    # evenly spaced interior points of [lo, hi], then the one closest to the largest section replaced by it
    picks = [int(round(lo + (hi - lo) * (i + 1) / (n + 1))) for i in range(n)]
    closest = int(np.argmin([abs(p - best) for p in picks]))
    picks[closest] = best
    return sorted(set(picks))


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display window from the 1st-99th percentiles of the nonzero voxels (all voxels if none)."""
    vals = image[image != 0]
    if vals.size == 0:
        vals = image.ravel()
    lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _blend(gray: np.ndarray, seg2d: np.ndarray, alpha: float) -> np.ndarray:
    """Greyscale slice (values 0..1) to RGB with each label value painted in its colour."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for value in np.unique(seg2d):
        if value == 0:
            continue
        m = seg2d == value
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(label_colour(int(value)))
    return rgb


def _check(name: str, arr: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    if arr.shape != shape:
        raise fail(path, f"{name} has shape {arr.shape}, the image has {shape}",
                   "pass arrays of the same (z, y, x) shape (resample the segmentation to the image)")


def save_overlay_png(image: np.ndarray, seg: np.ndarray, path: str | os.PathLike, ref: np.ndarray | None = None,
                     title: str = "", n_slices: int = 3, alpha: float = 0.45,
                     names: dict[int, str] | None = None) -> Path:
    """Write a PNG of ``n_slices`` axial slices of ``image`` (z, y, x) with ``seg`` painted over it.

    Columns: the image alone, the segmentation, and (when ``ref`` is given) the reference beside it.
    Colours follow label values (BraTS: red necrotic core, green oedema, yellow enhancing); ``names``
    maps label values to legend entries (default: the BraTS names). The file is written atomically.
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3:
        raise fail(path, f"overlay needs a 3D (z, y, x) image, got shape {image.shape}",
                   "pass one channel, e.g. the FLAIR image")
    seg = np.asarray(seg)
    _check("segmentation", seg, image.shape, path)
    if ref is not None:
        ref = np.asarray(ref)
        _check("reference", ref, image.shape, path)
    names = BRATS_NAMES if names is None else names
    zs = pick_slices(seg, n_slices, ref, image)
    lo, hi = _window(image)
    panels = [("image", None), ("prediction" if ref is not None else "segmentation", seg)]
    if ref is not None:
        panels.append(("reference", ref))

    h, w = image.shape[1:]
    cell = 2.6
    fig = Figure(figsize=(cell * len(panels) * max(w / h, 0.5), cell * len(zs) + (0.9 if title else 0.6)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(zs), len(panels), squeeze=False)
    for r, z in enumerate(zs):
        gray = np.clip((image[z].astype(np.float32) - lo) / (hi - lo), 0, 1)
        for c, (label, s) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(gray if s is None else _blend(gray, s[z], alpha), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"z = {z}", fontsize=9)
    present = sorted({int(v) for a in (seg, ref) if a is not None for v in np.unique(a) if v != 0})
    legend = {}
    for v in present:  # one legend entry per name (3 and 4 are both "enhancing")
        legend.setdefault(names.get(v, f"label {v}"), label_colour(v))
    if legend:
        fig.legend(handles=[Patch(color=c, label=n) for n, c in legend.items()], loc="lower center",
                   ncol=len(legend), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
