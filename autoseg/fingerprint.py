"""Dataset fingerprint: what the planner needs to know about a raw dataset, measured cheaply.

Saved as ``preprocessed/DatasetNNN_Name/fingerprint.json``. Shapes and spacings are in the array order
(z, y, x) *after* reorientation to the canonical orientation (see ``preprocessing``), shapes after
cropping to the nonzero box.

Cost is bounded whatever the dataset size: shape, spacing and orientation come from the headers of
every case, but only ``max_cases`` cases (a deterministic sample) are read in full, and each gives at
most ``voxels_per_case`` foreground intensities per channel. nnU-Net instead draws a fixed 1e8 samples
per channel (5 GB of RAM even for two cases).

The intensity statistics describe all foreground (label > 0) voxels of the sampled cases pooled
together: each case's samples carry the weight (its foreground voxels / its samples), so a case with a
large tumour counts for more, as its voxels do, and the result is exact when every voxel is sampled.
Percentiles (and the median) use the inverted-CDF definition (an actual sample value).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.boxes import mask_bounds
from autoseg.dataset import CaseFiles, DatasetInfo, load_dataset
from autoseg.errors import fail
from autoseg.io import read_header, read_image, read_json, write_json_atomic
from autoseg.orientation import orientation_code, reorientation_for
from autoseg.parallel import thread_map

FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class IntensityStats:
    """Foreground (label > 0) intensity statistics of one channel, pooled over the sampled cases."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    shape: list[int]            # original (z, y, x), canonical orientation
    spacing: list[float]        # (z, y, x) mm
    orientation: str            # original orientation code, e.g. "LPS", "RAS"
    # measured on the sampled cases only (None for the rest), so the cost stays bounded:
    shape_after_crop: list[int] | None = None        # nonzero bounding box
    label_voxels: dict[str, int] | None = None       # per foreground output name (region or label)


@dataclass(frozen=True)
class Fingerprint:
    dataset_name: str
    channel_names: dict[str, str]
    num_training: int
    cases: list[CaseFingerprint]
    intensity: list[IntensityStats]   # one per channel
    sampled_cases: list[str]           # which cases the intensity statistics were drawn from
    version: int = FINGERPRINT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spacings(self) -> list[list[float]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[list[int]]:
        """Cropped shapes of the sampled cases."""
        return [c.shape_after_crop for c in self.cases if c.shape_after_crop is not None]

    @property
    def median_relative_size_after_crop(self) -> float:
        import numpy as np

        rel = [float(np.prod(c.shape_after_crop)) / float(np.prod(c.shape)) for c in self.cases
               if c.shape_after_crop is not None]
        return float(np.median(rel)) if rel else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path | None = None) -> Fingerprint:
        try:
            if d.get("version") != FINGERPRINT_VERSION:
                raise fail(where, f"fingerprint version {d.get('version')} is not {FINGERPRINT_VERSION}", "rerun autoseg-plan")
            return cls(**{**d, "cases": [CaseFingerprint(**c) for c in d["cases"]],
                          "intensity": [IntensityStats(**s) for s in d["intensity"]]})
        except (KeyError, TypeError) as e:
            raise fail(where, f"fingerprint is incomplete or from another version ({e})", "rerun autoseg-plan") from None

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        return cls.from_dict(read_json(path), path)


# ---- computation --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseSample:
    """What one fully read case contributes: its crop box, label volumes and sampled intensities."""

    shape_after_crop: list[int]        # canonical (z, y, x)
    label_voxels: dict[str, int]
    intensities: np.ndarray            # (channels, samples) float32, foreground voxels only
    weight: float                      # foreground voxels represented by each sample


def header_fingerprint(case: CaseFiles) -> CaseFingerprint:
    """Shape, spacing and orientation of a case from its first channel's header (no voxel data read)."""
    geometry = read_header(case.images[0])
    reorient = reorientation_for(geometry, case.images[0])
    return CaseFingerprint(case.case_id, list(reorient.shape_zyx(geometry)), list(reorient.spacing_zyx(geometry)),
                           orientation_code(geometry.direction))


def choose_cases(case_ids: list[str], max_cases: int, seed: int) -> list[str]:
    """A deterministic sample of at most ``max_cases`` case ids (all of them when there are few)."""
    ids = sorted(case_ids)
    if len(ids) <= max_cases:
        return ids
    picked = np.random.default_rng(seed).choice(len(ids), max_cases, replace=False)
    return [ids[i] for i in sorted(picked)]


def sample_indices(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to ``k`` True voxels of ``mask``, drawn without replacement, in increasing order.

    All True voxels when there are at most ``k``. Works one z-slice at a time, so memory is bounded by
    ``k`` and one slice, not by the number of foreground voxels.
    """
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    total = int(per_slice.sum())
    if total <= k:
        return np.flatnonzero(mask)
    ranks = np.sort(rng.choice(total, k, replace=False))
    ends = np.cumsum(per_slice)
    slice_of = np.searchsorted(ends, ranks, side="right")
    plane = mask[0].size
    parts = []
    for z in np.unique(slice_of):
        local = np.flatnonzero(mask[z])
        parts.append(z * plane + local[ranks[slice_of == z] - (ends[z] - per_slice[z])])
    return np.concatenate(parts)


def sample_case(case: CaseFiles, info: DatasetInfo, voxels_per_case: int, seed: int) -> CaseSample:
    """Read one case (label, then one channel at a time) and measure what the fingerprint needs."""
    seg, geometry = read_image(case.label)
    counts = {v: int(np.count_nonzero(seg == v)) for v in info.label_values if v != 0}
    label_voxels = {name: sum(counts.get(v, 0) for v in region) for name, region in zip(info.foreground_names, info.regions)}
    rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
    foreground = seg > 0
    index = sample_indices(foreground, voxels_per_case, rng)
    weight = np.count_nonzero(foreground) / max(index.size, 1)
    del seg, foreground
    intensities = np.empty((len(case.images), index.size), dtype=np.float32)
    start, stop = np.array(geometry.shape_zyx), np.zeros(3, dtype=int)
    for c, path in enumerate(case.images):
        image, _ = read_image(path)
        if image.shape != geometry.shape_zyx:
            raise fail(path, f"shape {image.shape} differs from its label's {geometry.shape_zyx}",
                       "run the dataset check (autoseg-plan does) and fix the case")
        intensities[c] = image.ravel()[index]
        bounds = mask_bounds(image != 0)
        if bounds is not None:
            start, stop = np.minimum(start, [b[0] for b in bounds]), np.maximum(stop, [b[1] for b in bounds])
        del image
    crop = np.maximum(stop - start, 0)
    perm = reorientation_for(geometry, case.label).perm
    return CaseSample([int(crop[p]) for p in perm], label_voxels, intensities, float(weight))


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, percents: list[float]) -> np.ndarray:
    """Inverted-CDF percentiles of weighted samples: the smallest value whose cumulative weight reaches q%."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    targets = np.asarray(percents, dtype=np.float64) / 100.0 * cumulative[-1] * (1 - 1e-12)  # float round-off
    return values[order][np.minimum(np.searchsorted(cumulative, targets, side="left"), values.size - 1)]


def intensity_stats(values: np.ndarray, weights: np.ndarray) -> IntensityStats:
    """Weighted statistics of one channel's sampled foreground intensities."""
    values, weights = values.astype(np.float64), weights.astype(np.float64)
    mean = float(np.average(values, weights=weights))
    std = float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))
    p005, median, p995 = weighted_percentiles(values, weights, [0.5, 50.0, 99.5])
    return IntensityStats(mean=mean, std=std, median=float(median), min=float(values.min()), max=float(values.max()),
                          percentile_00_5=float(p005), percentile_99_5=float(p995))


def compute_fingerprint(raw_dir: Path, max_cases: int = 32, voxels_per_case: int = 10_000, workers: int = 2,
                        seed: int = 0) -> Fingerprint:
    """Fingerprint a raw dataset: headers of every training case, contents of a bounded sample.

    Deterministic for a given ``seed`` (independent of ``workers``). Intensity statistics are estimated
    from up to ``voxels_per_case`` foreground (label > 0) voxels per channel of each sampled case, weighted
    to stand for all of them. Memory: one label and one channel per worker, plus max_cases x
    voxels_per_case samples.
    """
    raw_dir = Path(raw_dir)
    if max_cases < 1 or voxels_per_case < 1:
        raise fail(None, f"max_cases ({max_cases}) and voxels_per_case ({voxels_per_case}) must be at least 1",
                   "use positive numbers")
    info, cases = load_dataset(raw_dir)
    sampled = choose_cases(list(cases), max_cases, seed)
    headers = thread_map(header_fingerprint, cases.values(), workers, "headers")
    measure = partial(sample_case, info=info, voxels_per_case=voxels_per_case, seed=seed)
    samples = dict(zip(sampled, thread_map(measure, [cases[c] for c in sampled], workers, "fingerprint")))
    pooled = np.concatenate([s.intensities for s in samples.values()], axis=1)
    weights = np.concatenate([np.full(s.intensities.shape[1], s.weight) for s in samples.values()])
    if pooled.shape[1] == 0:
        raise fail(raw_dir / "labelsTr", f"no foreground voxel in the labels of the {len(sampled)} sampled case(s)",
                   "check the labels (empty labels cannot be trained on)")
    fingerprints = [CaseFingerprint(h.case_id, h.shape, h.spacing, h.orientation,
                                    samples[h.case_id].shape_after_crop, samples[h.case_id].label_voxels)
                    if h.case_id in samples else h for h in headers]
    return Fingerprint(dataset_name=raw_dir.name, channel_names=dict(info.channel_names), num_training=len(cases),
                       cases=fingerprints, intensity=[intensity_stats(ch, weights) for ch in pooled], sampled_cases=sampled,
                       extra={"sampling": {"max_cases": max_cases, "voxels_per_case": voxels_per_case, "seed": seed,
                                           "foreground_voxels_per_channel": int(pooled.shape[1])}})
