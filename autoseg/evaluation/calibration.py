"""Calibration of predicted probabilities, and whether the per-case uncertainty ranks the worst cases.

**Expected calibration error** per region or label: the predicted probability p of each voxel (from
``PRED/CASE.npz``, written by ``autoseg-predict --save-probabilities``) falls into one of ``ECE_BINS``
equal-width bins over [0, 1]; ECE = sum over bins of (voxels in the bin / all voxels) x |mean p in the
bin - fraction of those voxels inside the reference region|, pooled over every case. This is the
reliability of p itself (of voxels given 70 %, are 70 % tumour?), the binary form suited to sigmoid
regions and one-vs-rest labels. Only the voxels of the bounding box of the reference region and the
predicted one (p >= 0.5) count, per case: over the whole image the millions of certain background
voxels would push any model's ECE to about 0. A case where both are empty adds no voxels.

**Ranking**: Spearman's rank correlation, per region, between the per-case uncertainty score that
``autoseg-predict --uncertainty`` writes (``PRED/uncertainty/CASE.json``) and the case's Dice. A score
that ranks the worst cases has a strongly negative correlation (more uncertain, lower Dice).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoseg.boxes import mask_bounds
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError, fail
from autoseg.inference.uncertainty import FOLDER, output_channels, read_case_uncertainty
from autoseg.io import atomic_path, read_image

if TYPE_CHECKING:
    from autoseg.evaluation.evaluate import EvalCase

ECE_BINS = 10
VOXELS = "per case, the bounding box of the reference region and the predicted one (p >= 0.5)"
SCORE = "region's total binary entropy / predicted voxels (autoseg-predict --uncertainty)"


@dataclass
class Reliability:
    """Per equal-width probability bin: voxel count, summed probability and voxels inside the reference."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, np.int64))
    prob_sum: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, np.float64))
    positives: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, np.int64))

    def add(self, probs: np.ndarray, truth: np.ndarray) -> None:
        """Count voxels with probabilities ``probs`` and reference masks ``truth`` (same shape)."""
        bins = len(self.count)
        p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 0, 1)
        index = np.minimum((p * bins).astype(np.int64), bins - 1)   # p = 1 belongs to the last bin
        self.count += np.bincount(index, minlength=bins)
        self.prob_sum += np.bincount(index, weights=p, minlength=bins)
        self.positives += np.bincount(index, weights=np.asarray(truth, bool).ravel(), minlength=bins).astype(np.int64)

    def merge(self, other: Reliability) -> None:
        self.count += other.count
        self.prob_sum += other.prob_sum
        self.positives += other.positives

    @property
    def voxels(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float | None:
        """Expected calibration error; None without voxels."""
        if not self.voxels:
            return None
        filled = self.count > 0
        gap = np.abs(self.prob_sum[filled] - self.positives[filled]) / self.count[filled]
        return float(np.sum(gap * self.count[filled]) / self.voxels)

    def curve(self) -> tuple[list[float | None], list[float | None]]:
        """Per bin the mean predicted probability and the observed frequency (None for empty bins)."""
        conf = [float(s / n) if n else None for s, n in zip(self.prob_sum, self.count)]
        freq = [float(k / n) if n else None for k, n in zip(self.positives, self.count)]
        return conf, freq

    def to_dict(self) -> dict[str, Any]:
        conf, freq = self.curve()
        return {"ece": self.ece(), "voxels": self.voxels, "confidence": conf, "frequency": freq,
                "count": self.count.tolist()}


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE of probabilities against binary truth with ``bins`` equal-width bins (module docstring)."""
    r = Reliability(np.zeros(bins, np.int64), np.zeros(bins, np.float64), np.zeros(bins, np.int64))
    r.add(probs, truth)
    return r.ece()


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None for fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} vs {len(y)} values")
    if len(x) < 3:
        return None
    from scipy.stats import rankdata   # here: scipy.stats takes a while to import, and is needed only here
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    denominator = float(np.sqrt(np.sum(rx * rx) * np.sum(ry * ry)))
    return float(np.sum(rx * ry) / denominator) if denominator > 0 else None


def region_box(ref_mask: np.ndarray, prob: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the reference mask and of ``prob >= 0.5``; None when both are empty."""
    bounds = [b for b in (mask_bounds(ref_mask), mask_bounds(prob >= 0.5)) if b is not None]
    if not bounds:
        return None
    return tuple(slice(min(b[a][0] for b in bounds), max(b[a][1] for b in bounds)) for a in range(ref_mask.ndim))


def case_reliability(probs: np.ndarray, ref: np.ndarray, channels: Mapping[str, int],
                     info: DatasetInfo) -> dict[str, Reliability]:
    """Per declared region/label of ``info`` its reliability counts in one case; ``channels`` maps the
    names to the probabilities' channels (the predicting model's outputs)."""
    out = {}
    for name, values in zip(info.foreground_names, info.regions):
        truth = np.isin(ref, values)
        prob = probs[channels[name]]
        r = Reliability()
        box = region_box(truth, prob)
        if box is not None:
            r.add(prob[box], truth[box])
        out[name] = r
    return out


def probabilities_path(case: EvalCase) -> Path:
    return case.pred.parent / f"{case.case_id}.npz"


def scores_path(case: EvalCase) -> Path:
    return case.pred.parent / FOLDER / f"{case.case_id}.json"


def check_inputs(cases: Sequence[EvalCase], calibration: bool, uncertainty: bool) -> None:
    """Before any work: every case has its probabilities / its uncertainty scores, else one line naming the
    first missing file and the fix."""
    for case in cases:
        if calibration and not os.path.isfile(probabilities_path(case)):
            raise fail(probabilities_path(case), "probabilities missing (--calibration reads them)",
                       "predict with autoseg-predict --save-probabilities, or leave out --calibration")
        if uncertainty and not os.path.isfile(scores_path(case)):
            raise fail(scores_path(case), "uncertainty score missing (--uncertainty reads it)",
                       "predict with autoseg-predict --uncertainty, or leave out --uncertainty")


def _case_calibration(case: EvalCase, info: DatasetInfo) -> dict[str, Reliability]:
    from autoseg.inference.predictions import load_probabilities
    path = probabilities_path(case)
    saved = load_probabilities(path)
    ref, _ = read_image(case.ref)
    if saved.probabilities.shape[1:] != ref.shape:
        raise fail(path, f"probabilities of shape {saved.probabilities.shape[1:]} differ from the reference "
                   f"{ref.shape} ({case.ref})", "save the probabilities of the prediction being evaluated")
    channels = output_channels(saved.info)
    missing = [n for n in info.foreground_names if n not in channels]
    if missing:
        raise fail(path, f"no output named {', '.join(missing)} (the model has {', '.join(channels)})",
                   "evaluate with the dataset.json the model was trained with (-d / --dataset-json)")
    return case_reliability(saved.probabilities, ref, channels, info)


def calibration_section(cases: Sequence[EvalCase], info: DatasetInfo, figure: Path | None = None
                        ) -> tuple[dict[str, Any], list[str]]:
    """``summary.json``'s ``calibration`` (pooled ECE and reliability per region, ECE per case) and the
    cases that failed (one line each); ``figure`` writes the reliability diagram there."""
    pooled = {name: Reliability() for name in info.foreground_names}
    per_case: dict[str, dict[str, float | None]] = {}
    failed = []
    for case in cases:
        try:
            counts = _case_calibration(case, info)
        except AutosegError as e:
            failed.append(str(e))
            continue
        per_case[case.case_id] = {name: r.ece() for name, r in counts.items()}
        for name, r in counts.items():
            pooled[name].merge(r)
    if figure is not None and per_case:
        save_reliability_png(pooled, figure)
    section = {"bins": ECE_BINS, "voxels": VOXELS, "num_cases": len(per_case),
               "regions": {name: r.to_dict() for name, r in pooled.items()}, "per_case": per_case}
    return section, failed


def ranking_section(cases: Sequence[EvalCase], per_case_metrics: Mapping[str, Mapping[str, Mapping[str, float]]]
                    ) -> tuple[dict[str, Any], list[str]]:
    """``summary.json``'s ``uncertainty_ranking``: per region Spearman(score, Dice) over the evaluated cases."""
    scores: dict[str, dict[str, float]] = {}
    failed = []
    for case in cases:
        if case.case_id in per_case_metrics:
            try:
                scores[case.case_id] = read_case_uncertainty(scores_path(case))["score"]
            except AutosegError as e:
                failed.append(str(e))
    names = [n for n in next(iter(per_case_metrics.values()), {}) if any(n in s for s in scores.values())]
    regions = {}
    for name in names:
        ids = [c for c in scores if name in scores[c]]
        rho = spearman([scores[c][name] for c in ids], [per_case_metrics[c][name]["dice"] for c in ids])
        regions[name] = {"spearman_dice": rho, "cases": len(ids)}
    return {"score": SCORE, "regions": regions, "per_case": scores}, failed


def calibration_and_ranking(cases: Sequence[EvalCase], info: DatasetInfo,
                            per_case_metrics: Mapping[str, Mapping[str, Mapping[str, float]]], out_dir: Path,
                            calibration: bool, uncertainty: bool) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """What ``autoseg-evaluate --calibration / --uncertainty`` adds for the evaluated cases: the summary
    sections, the cases that failed (one line each) and the figures for the report (``reliability.png``)."""
    evaluated = [c for c in cases if c.case_id in per_case_metrics]
    sections: dict[str, Any] = {}
    failed: list[str] = []
    figures: dict[str, Path] = {}
    if calibration:
        png = out_dir / "reliability.png"
        sections["calibration"], lines = calibration_section(evaluated, info, png)
        failed += lines
        if sections["calibration"]["num_cases"]:
            figures["Reliability diagram"] = png
    if uncertainty:
        sections["uncertainty_ranking"], lines = ranking_section(evaluated, per_case_metrics)
        failed += lines
    return sections, failed, figures


def report_table(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One row per region for the HTML report: pooled ECE, its voxels, and Spearman(score, Dice)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, r in summary.get("calibration", {}).get("regions", {}).items():
        rows.setdefault(name, {}).update({f"ECE ({ECE_BINS} bins)": r["ece"], "voxels": r["voxels"]})
    for name, r in summary.get("uncertainty_ranking", {}).get("regions", {}).items():
        rows.setdefault(name, {}).update({"Spearman(score, Dice)": r["spearman_dice"], "cases": r["cases"]})
    return rows


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """What the command prints of the calibration and ranking sections, one line per region."""
    lines = []
    for name, r in summary.get("calibration", {}).get("regions", {}).items():
        ece = "-" if r["ece"] is None else f"{r['ece']:.4f}"
        lines.append(f"{name:>18}: ECE {ece} ({ECE_BINS} bins, {r['voxels']} voxels)")
    for name, r in summary.get("uncertainty_ranking", {}).get("regions", {}).items():
        rho = "-" if r["spearman_dice"] is None else f"{r['spearman_dice']:+.3f}"
        lines.append(f"{name:>18}: Spearman(uncertainty score, Dice) {rho} over {r['cases']} case(s)")
    return lines


def save_reliability_png(curves: Mapping[str, Reliability], path: str | os.PathLike) -> Path:
    """Reliability diagram: observed frequency against mean probability per bin, one line per region (ECE
    in the legend), the diagonal of perfect calibration, and below it the voxels per bin (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(5.5, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect calibration")
    for name, r in curves.items():
        conf, freq = r.curve()
        xs = [c for c, f in zip(conf, freq) if c is not None]
        ys = [f for c, f in zip(conf, freq) if c is not None]
        ece = r.ece()
        label = f"{name} (ECE {ece:.3f})" if ece is not None else f"{name} (no voxels)"
        line = top.plot(xs, ys, marker="o", markersize=4, label=label)[0]
        edges = np.linspace(0, 1, len(r.count) + 1)
        bottom.stairs(np.maximum(r.count, 0.5), edges, color=line.get_color(), baseline=0.5)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction inside the reference")
    bins = len(next(iter(curves.values())).count) if curves else ECE_BINS
    top.set_title(f"Reliability ({bins} equal-width bins)", fontsize=11)
    top.legend(fontsize=8, loc="best")
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("voxels")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
