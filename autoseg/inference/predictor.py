"""Predict new cases with trained folds: load once, then predict many (in-process deployment).

:class:`Predictor` holds the fold networks of one configuration; :meth:`Predictor.predict` turns raw
channels into probabilities in the input's own grid (fold logits averaged, then sigmoid/softmax).
:func:`predict_folder` runs it over a folder (raw layout or BraTS case folders), writes NIfTI
segmentations in each input's geometry and label convention, skips finished cases, and reports a
bad case in one line while the others finish. With ``uncertainty`` it also writes per-voxel entropy and
member-variance maps and a per-case score (:mod:`autoseg.inference.uncertainty`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoseg.brats import ENHANCING, find_brats_case
from autoseg.checkpoint import load_checkpoint
from autoseg.context import stack_context
from autoseg.dataset import DatasetInfo, check_case_id, is_os_litter
from autoseg.errors import AutosegError, fail
from autoseg.inference.sliding_window import (eval_mode, logits_to_probabilities, mirror_combinations,
                                              sliding_window_logits)
from autoseg.inference.uncertainty import RunningVariance, uncertainty_paths, write_case_uncertainty, write_scores_csv
from autoseg.input_forms import InputCase, form_input_cases
from autoseg.io import Geometry, read_image, save_npz_atomic, write_image
from autoseg.locks import lock_name, write_lock
from autoseg.network import network_for_dataset
from autoseg.parallel import shard as shard_items
from autoseg.paths import DEFAULT_RECIPE, DatasetPaths, run_folder_name
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans
from autoseg.postprocessing import PostprocessingPlan
from autoseg.precision import compute_dtype_for
from autoseg.preprocessing import preprocess_case, restore_probabilities
from autoseg.provenance import (case_record, drop_record, make_record, model_identity, postprocessing_identity,
                                staleness, write_record)
from autoseg.recipes import recipe_of_checkpoint

CHECKPOINTS = ("final", "best", "latest")


def find_input_cases(folder: str | Path, num_channels: int, file_ending: str = ".nii.gz") -> list[InputCase]:
    """Cases in ``folder``: raw layout (``CASE_0000.nii.gz`` ...), BraTS-named case folders, or one BraTS folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise fail(folder, "input folder not found", "give the folder holding the cases with -i")
    single = find_brats_case(folder)
    if single is not None:
        return [InputCase(single.case_id, single.channels, single.convention)]
    cases: dict[str, InputCase] = {}
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    entries = [p for p in folder.iterdir() if not is_os_litter(p.name)]
    ids = sorted({m.group(1) for p in entries if p.is_file() and (m := pattern.match(p.name))})
    for cid in ids:
        cases[cid] = InputCase(cid, tuple(folder / f"{cid}_{c:04d}{file_ending}" for c in range(num_channels)))
    for sub in sorted(p for p in entries if p.is_dir()):
        bc = find_brats_case(sub)
        if bc is not None:
            cases.setdefault(bc.case_id, InputCase(bc.case_id, bc.channels, bc.convention))
    if not cases:
        raise fail(folder, f"no cases found (expected CASE_0000{file_ending} ... or BraTS case folders)",
                   "check -i; see docs/inference.md for the accepted layouts")
    return [cases[k] for k in sorted(cases)]


def read_input_case(case: InputCase, missing: Sequence[int] = ()) -> tuple[list[np.ndarray], Geometry]:
    """Read every channel; a missing, unreadable or mismatched channel is an AutosegError naming its file.

    Channels in ``missing`` are not read (their files may be absent): they come back as zeros, which
    :class:`Predictor` keeps at zero after normalisation."""
    check_case_id(case.case_id, case.channels[0])   # the id names the output file: no '..' or separators
    if case.form is not None:   # PNG/TIFF slices or DICOM series: read the way their conversion reads them
        return case.form.read(missing)
    if len(missing) >= len(case.channels):
        raise fail(case.channels[0], "every channel is marked missing", "--missing may name all channels but one")
    images: list[np.ndarray | None] = []
    geometry = None
    for c, path in enumerate(case.channels):
        if c in missing:
            images.append(None)
            continue
        if not path.is_file():
            raise fail(path, "channel file missing",
                       "add it, remove the case from the input folder, or predict without it: --missing CHANNEL")
        image, geom = read_image(path, np.float32)
        if geometry is None:
            geometry = geom
        elif (problem := geometry.mismatch(geom)) is not None:
            raise fail(path, f"{problem} of the first channel", "all channels of a case must share one image grid")
        if not image.any():   # e.g. a missing MRI sequence filled with zeros: the networks would silently guess
            raise fail(path, "image is all zero",
                       "re-export it, or predict without this channel: --missing CHANNEL")
        images.append(image)
    assert geometry is not None
    return [np.zeros(geometry.shape_zyx, np.float32) if im is None else im for im in images], geometry


def channel_indices(names: Sequence[str], info: DatasetInfo, where: str | Path | None = None) -> tuple[int, ...]:
    """Channel numbers for names from dataset.json's channel_names (any case) or numbers (``0``, ``3``)."""
    by_name = {str(v).lower(): int(k) for k, v in info.channel_names.items()}
    out = []
    for name in names:
        if name.isdigit() and int(name) < info.num_channels:
            out.append(int(name))
        elif name.lower() in by_name:
            out.append(by_name[name.lower()])
        else:
            raise fail(where, f"--missing {name}: no such channel",
                       f"use one of {', '.join(str(v) for v in info.channel_names.values())} or 0..{info.num_channels - 1}")
    if len(set(out)) >= info.num_channels:
        raise fail(where, "--missing names every channel", "at least one channel must be given to predict from")
    return tuple(sorted(set(out)))


def output_label_map(info: DatasetInfo, convention: str | None) -> dict[int, int]:
    """Label values to rewrite so the output follows the input's BraTS convention (e.g. {4: 3})."""
    if convention is None or info.label_convention not in ENHANCING or convention not in ENHANCING:
        return {}
    src, dst = ENHANCING[info.label_convention], ENHANCING[convention]
    return {src: dst} if src != dst else {}


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise fail(None, "--device cuda asked for but no CUDA GPU is visible", "use --device cpu or auto")
    return torch.device(device)


def configuration_from_dict(d: dict) -> ConfigurationPlan:
    """ConfigurationPlan from the dict stored in a checkpoint."""
    d = dict(d)
    d["network"] = NetworkPlan.from_dict(d["network"])
    d["normalization"] = [ChannelNormalization(**n) for n in d["normalization"]]
    return ConfigurationPlan(**d)


@dataclass
class Predictor:
    """The fold networks of one configuration, loaded once; predicts raw cases (see module docstring)."""

    config: ConfigurationPlan
    info: DatasetInfo
    networks: list[nn.Module]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mirroring: bool = True
    step: float = 0.5
    batch_size: int = 1
    compute_dtype: torch.dtype | None = None
    compile: bool = False
    missing_channels: tuple[int, ...] = ()   # zero after normalisation: predict without these sequences
    _compiled: dict[int, nn.Module] = field(default_factory=dict, repr=False)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: str = "auto", precision: str = "auto",
                         expected_configuration: dict | None = None, dataset: str | None = None,
                         folds: Sequence[int | str] | None = None, recipe: str | None = None,
                         **options) -> Predictor:
        """Load checkpoints written by autoseg-train (all of one configuration and dataset); with
        ``expected_configuration`` (the current plan's), a checkpoint of another plan is refused, with
        ``dataset`` (``DatasetNNN_Name``) and ``folds`` (one per path) one trained for another dataset or fold, and
        with ``recipe`` (a name) one trained with another recipe. Each network is rebuilt from its checkpoint: the
        plan's network as its recipe changed it."""
        if not paths:
            raise fail(None, "no checkpoint given", "train a fold first or check -f")
        dev = pick_device(device)
        origin = [(dataset, f) for f in folds] if folds is not None else [(dataset, None)] * len(paths)
        first = load_checkpoint(paths[0], expected_configuration, dataset=origin[0][0], fold=origin[0][1])
        config, info = configuration_from_dict(first["configuration"]), DatasetInfo.from_dict(first["dataset"], paths[0])
        networks = []
        for i, path in enumerate(paths):
            ckpt = first if i == 0 else load_checkpoint(path, first["configuration"], dataset=origin[i][0],
                                                        fold=origin[i][1])
            trained_with = recipe_of_checkpoint(ckpt, path).name
            if recipe is not None and trained_with != recipe:
                raise fail(path, f"checkpoint was trained with recipe {trained_with}, but lies in the folder of recipe "
                           f"{recipe}", f"use --recipe {trained_with}, or move its fold folder to "
                           f"{run_folder_name(config.name, trained_with)}/")
            net_plan = NetworkPlan.from_dict(ckpt["network"]) if "network" in ckpt else config.network
            net = network_for_dataset(net_plan, info, deep_supervision=False)
            try:
                net.load_state_dict(ckpt["network_state"])
            except RuntimeError as e:
                raise fail(path, f"weights do not fit the network of its plan ({str(e).splitlines()[0][:80]})",
                           "use an untouched checkpoint written by autoseg-train") from None
            networks.append(net.to(dev).eval())
        return cls(config, info, networks, dev, compute_dtype=compute_dtype_for(precision, dev), **options)

    @classmethod
    def from_results(cls, paths: DatasetPaths, configuration: str = "3d_fullres",
                     folds: Sequence[int | str] | None = None, checkpoint: str = "final", recipe: str | None = None,
                     **kwargs) -> Predictor:
        """Load the folds of ``results/DatasetX/CONFIG`` (``RECIPE__CONFIG`` for another ``recipe`` than the default);
        ``folds=None`` takes every trained cross-validation fold (``fold_all``, the model trained on every case,
        only when there is none)."""
        recipe = recipe or DEFAULT_RECIPE
        run_dir = paths.run_dir(configuration, recipe)
        if checkpoint not in CHECKPOINTS:
            raise fail(None, f"--checkpoint {checkpoint!r} unknown", f"use one of {', '.join(CHECKPOINTS)}")
        name = f"checkpoint_{checkpoint}.pt"
        if paths.plans_json.is_file() and "expected_configuration" not in kwargs:   # refuse folds of an older plan
            planned = Plans.load(paths.plans_json).configurations.get(configuration)
            kwargs["expected_configuration"] = asdict(planned) if planned is not None else None
        if folds is None:
            found = sorted(p for p in run_dir.glob(f"fold_[0-9]*/{name}"))
            found = found or sorted(run_dir.glob(f"fold_all/{name}"))
            if not found:
                with_recipe = "" if recipe == DEFAULT_RECIPE else f" --recipe {recipe}"
                raise fail(run_dir, f"no trained fold with {name}",
                           f"train one first: autoseg-train {configuration} fold0{with_recipe}")
            folds = [p.parent.name.removeprefix("fold_") for p in found]
            return cls.from_checkpoints(found, dataset=paths.name, folds=folds, recipe=recipe, **kwargs)
        return cls.from_checkpoints([paths.fold_dir(configuration, f, recipe) / name for f in folds], dataset=paths.name,
                                    folds=folds, recipe=recipe, **kwargs)

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return tuple(self.config.mirror_axes) if self.mirroring else ()

    @property
    def num_members(self) -> int:
        """Ensemble members: fold networks x mirrorings."""
        return len(self.networks) * len(mirror_combinations(self.mirror_axes))

    def logits(self, data: torch.Tensor, progress: bool = False, members: RunningVariance | None = None
               ) -> torch.Tensor:
        """Fold-averaged logits (num_outputs, *preprocessed shape) of a preprocessed case; ``members``, when
        given, receives every member's probabilities (the flips then run one after the other)."""
        total = None
        for i, net in enumerate(self.networks):
            with eval_mode(net):
                out = self._fold_logits(i, data, progress, members)
            total = out if total is None else total.add_(out)
        assert total is not None
        return total.div_(len(self.networks))

    def _fold_logits(self, i: int, data: torch.Tensor, progress: bool,
                     members: RunningVariance | None = None) -> torch.Tensor:
        def add_member(logits: torch.Tensor) -> None:
            assert members is not None
            members.add(logits_to_probabilities(logits, self.info.region_based))

        counted = members.count if members is not None else 0

        def run(net: nn.Module) -> torch.Tensor:
            return sliding_window_logits(net, data, self.config.patch_size, self.info.num_outputs, self.mirror_axes,
                                         self.step, self.batch_size, self.device, self.compute_dtype,
                                         progress=progress, member=None if members is None else add_member)
        if not self.compile:
            return run(self.networks[i])
        first = i not in self._compiled
        if first:
            self._compiled[i] = torch.compile(self.networks[i], dynamic=False)
        try:
            if not first:
                return run(self._compiled[i])
            # the first call compiles; freezing lets inductor pre-pack the conv weights for oneDNN
            import torch._inductor.config as inductor_config
            with inductor_config.patch(freezing=True):
                return run(self._compiled[i])
        except Exception as e:  # noqa: BLE001 - no compiler / unsupported op: eager is always correct
            if not first or (members is not None and members.count != counted):   # members would count twice
                raise
            print(f"autoseg: torch.compile unavailable ({type(e).__name__}); predicting without it", file=sys.stderr)
            self.compile = False
            return run(self.networks[i])

    def preprocess(self, images: list[np.ndarray], geometry: Geometry) -> tuple[np.ndarray, Any]:
        """The case as the networks see it: preprocessed, with ``missing_channels`` set to 0 (their mean), and
        for a 2.5D plan each slice stacked with its neighbours (:func:`autoseg.context.stack_context`)."""
        data, _, props = preprocess_case(images, geometry, self.config, self.info)
        for c in self.missing_channels:
            data[c] = 0
        return stack_context(data, self.config.network.context_slices), props

    def predict(self, images: list[np.ndarray], geometry: Geometry, progress: bool = False) -> np.ndarray:
        """Probabilities (num_outputs, *original zyx) float32 for raw channels in their own grid."""
        data, props = self.preprocess(images, geometry)
        probs = self.probabilities_preprocessed(torch.from_numpy(data), progress)
        background = None if self.info.region_based else 0
        return restore_probabilities(probs, props, background)

    def probabilities_preprocessed(self, data: torch.Tensor, progress: bool = False) -> np.ndarray:
        logits = self.logits(data, progress)
        return logits_to_probabilities(logits, self.info.region_based).float().cpu().numpy()

    def predict_with_variance(self, images: list[np.ndarray], geometry: Geometry, progress: bool = False
                              ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict`'s probabilities (up to float rounding) and the members' probability variance,
        averaged over the outputs, (z, y, x) float32, both in the input's grid (0 outside the crop)."""
        data, props = self.preprocess(images, geometry)
        members = RunningVariance()
        logits = self.logits(torch.from_numpy(data), progress, members)
        probs = logits_to_probabilities(logits, self.info.region_based).float().cpu().numpy()
        del logits
        variance = members.variance().mean(0, keepdim=True).cpu().numpy()
        del members
        background = None if self.info.region_based else 0
        return restore_probabilities(probs, props, background), restore_probabilities(variance, props)[0]


def segmentation_from_probabilities(probs: np.ndarray, info: DatasetInfo, convention: str | None = None,
                                    postprocessing: PostprocessingPlan | None = None) -> np.ndarray:
    """Label map in the dataset's values, postprocessed, then rewritten to the input's BraTS convention."""
    seg = info.label_from_outputs(probs)
    if postprocessing is not None:
        seg = postprocessing.apply(seg, info)
    for src, dst in output_label_map(info, convention).items():
        seg[seg == src] = dst
    return seg


def save_probabilities(path: Path, probs: np.ndarray, geometry: Geometry, info: DatasetInfo,
                       convention: str | None) -> None:
    """float16 probabilities in the original grid plus what is needed to write a segmentation from them."""
    meta = {"geometry": {"size": geometry.size, "spacing": geometry.spacing, "origin": geometry.origin,
                         "direction": geometry.direction}, "dataset": info.to_dict(), "convention": convention}
    save_npz_atomic(path, probabilities=probs.astype(np.float16), meta=np.array(json.dumps(meta)))


@dataclass
class PredictionReport:
    """What :func:`predict_folder` did: cases written, skipped as up to date, and failures (one line each); which
    of the written cases had outputs that were stale (made by another model, from other inputs or options)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stale: dict[str, str] = field(default_factory=dict)   # case -> why its earlier outputs were out of date


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}.npz"


def _is_done(case: InputCase, out_dir: Path, with_probabilities: bool) -> bool:
    """Whether the case's outputs exist; os.path.isfile, not Path.is_file, because a name too long for the
    file system must make this case fail when it is written (one line), not stop every case here."""
    seg, npz = output_paths(out_dir, case.case_id)
    written = case.form.done(out_dir) if case.form is not None and case.form.writes_output else os.path.isfile(seg)
    return written and (os.path.isfile(npz) or not with_probabilities)


def _prefetch(cases: list[InputCase], missing: Sequence[int] = ()) -> Iterator[tuple[InputCase, Future]]:
    """Read the next case in a background thread while the current one is predicted."""
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(read_input_case, cases[0], missing)] if cases else []
        for i, case in enumerate(cases):
            if i + 1 < len(cases):
                futures.append(pool.submit(read_input_case, cases[i + 1], missing))
            yield case, futures[i]


def predict_folder(predictor: Predictor, input_dir: str | Path, output_dir: str | Path,
                   save_probs: bool = False, postprocessing: PostprocessingPlan | None = None,
                   shard: tuple[int, int] = (0, 1), overlay_png: bool = False, progress: bool = True,
                   uncertainty: bool = False, case_ids: Collection[str] | None = None) -> PredictionReport:
    """Predict every case of ``input_dir`` (its ``shard``; only ``case_ids`` when given, e.g. a fold's held-out
    cases) into ``output_dir``; see the module docstring."""
    out_dir = Path(output_dir)
    cases = (form_input_cases(input_dir, predictor.info)
             or find_input_cases(input_dir, predictor.info.num_channels, predictor.info.file_ending))
    if case_ids is not None:
        cases = [c for c in cases if c.case_id in case_ids]
    cases = shard_items(cases, *shard, key=lambda c: c.case_id)
    report = PredictionReport()
    try:   # before any work: an output folder that cannot exist fails now, not after every case is predicted
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(out_dir, f"cannot create the output folder ({e.strerror or e})",
                   "choose a writable folder with -o") from None
    with write_lock(out_dir, "prediction", "write to another folder with -o", lock_name(shard)):
        todo = []
        model = model_identity(predictor.networks, asdict(predictor.config), predictor.info.to_dict())
        for case in cases:
            record = _record(predictor, model, case, postprocessing)
            if _is_done(case, out_dir, save_probs) and (
                    not uncertainty or uncertainty_paths(out_dir, case.case_id)[2].is_file()):
                why = "inputs unreadable" if record is None else staleness(case_record(out_dir, case.case_id), record)
                if why is None:
                    report.skipped.append(case.case_id)
                    continue
                report.stale[case.case_id] = why
            todo.append((case, record))
        _predict_cases(predictor, todo, out_dir, report, save_probs, postprocessing, overlay_png, progress,
                       uncertainty)
    return report


def _record(predictor: Predictor, model: dict, case: InputCase, postprocessing: PostprocessingPlan | None
            ) -> dict | None:
    """What the case's outputs depend on (:mod:`autoseg.provenance`); None if an input cannot be looked at (the
    case then fails when it is read, with its own message)."""
    post = postprocessing_identity(postprocessing)
    options = {"mirror_axes": list(predictor.mirror_axes), "step": predictor.step,
               "precision": str(predictor.compute_dtype), "missing_channels": sorted(predictor.missing_channels),
               "postprocessing": post, "convention": case.convention}
    inputs = [p for c, p in enumerate(case.channels) if c not in predictor.missing_channels]
    try:
        return make_record("autoseg-predict", inputs, options, model)
    except OSError:
        return None


def _predict_cases(predictor: Predictor, todo: list[tuple[InputCase, dict | None]], out_dir: Path,
                   report: PredictionReport, save_probs: bool, postprocessing: PostprocessingPlan | None,
                   overlay_png: bool, progress: bool, uncertainty: bool) -> None:
    records = {case.case_id: record for case, record in todo}
    bar = tqdm(total=len(todo), desc="predict", unit="case", disable=not progress or not todo)
    with ThreadPoolExecutor(1) as writer:
        pending: list[Future] = []
        for case, loaded in _prefetch([case for case, _ in todo], predictor.missing_channels):
            try:
                images, geometry = loaded.result()
                if uncertainty:
                    probs, variance = predictor.predict_with_variance(images, geometry, progress)
                else:
                    probs, variance = predictor.predict(images, geometry, progress), None
                pending.append(writer.submit(_export, case, probs, geometry, predictor.info, out_dir, save_probs,
                                             postprocessing, images[-1] if overlay_png else None, variance,
                                             predictor.num_members, records[case.case_id]))
                report.written.append(case.case_id)
            except AutosegError as e:
                report.failed.append(f"{case.case_id}: {e}")
            bar.update()
        for case_id, fut in zip(list(report.written), pending):
            try:
                fut.result()
            except AutosegError as e:
                report.written.remove(case_id)
                report.failed.append(f"{case_id}: {e}")
    bar.close()
    if uncertainty:
        try:
            write_scores_csv(out_dir)
        except AutosegError as e:
            report.failed.append(str(e))


def _export(case: InputCase, probs: np.ndarray, geometry: Geometry, info: DatasetInfo, out_dir: Path,
            save_probs: bool, postprocessing: PostprocessingPlan | None, image: np.ndarray | None,
            variance: np.ndarray | None = None, members: int = 0, record: dict | None = None) -> None:
    seg_path, npz_path = output_paths(out_dir, case.case_id)
    drop_record(case_record(out_dir, case.case_id))   # (outputs half rewritten are never taken for up to date)
    if save_probs:
        save_probabilities(npz_path, probs, geometry, info, case.convention)
    seg = segmentation_from_probabilities(probs, info, case.convention, postprocessing)
    if case.form is not None and case.form.writes_output:   # PNG/TIFF in, PNG/TIFF out: names, sizes, grey values
        case.form.write(seg, out_dir)
    else:
        write_image(seg_path, seg, geometry)
    if variance is not None:
        write_case_uncertainty(out_dir, case.case_id, probs, variance, members, seg, geometry, info,
                               output_label_map(info, case.convention))
    if image is not None:
        from autoseg.visualize import save_overlay_png
        overlays = out_dir / "overlays" if case.form is not None else out_dir   # 2D PNG outputs are CASE.png
        save_overlay_png(image, seg, overlays / f"{case.case_id}.png", title=case.case_id)
    if record is not None:
        write_record(case_record(out_dir, case.case_id), record)
