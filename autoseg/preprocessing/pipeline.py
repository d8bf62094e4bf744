"""Preprocess every training case of a raw dataset for one configuration, in worker processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoseg.dataset import CaseFiles, DatasetInfo, load_dataset
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import Geometry, off_grid, read_channels, read_image
from autoseg.locks import lock_name, write_lock
from autoseg.parallel import WorkerDied, process_map
from autoseg.parallel import shard as shard_items
from autoseg.paths import DatasetPaths
from autoseg.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.case import configured_spacing, preprocess_case
from autoseg.preprocessing.properties import CaseProperties
from autoseg.preprocessing.storage import (FORMAT_VERSION, foreground_locations, is_complete, link_case, read_marker,
                                           save_case)

TASKS_PER_WORKER = 20  # fresh worker processes now and then keep memory bounded over long runs


def content_key(config: ConfigurationPlan, info: DatasetInfo) -> str:
    """Hash of what the stored arrays depend on besides the spacing (normalisation, regions, channels)."""
    basis = {"format": FORMAT_VERSION, "normalization": [asdict(n) for n in config.normalization],
             "regions": info.regions, "channels": info.channel_names}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def plan_key(config: ConfigurationPlan, info: DatasetInfo) -> str:
    """Hash of everything the stored data depends on; a case written under another key is redone."""
    basis = {"content": content_key(config, info), "spacing": config.spacing}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def reuse_sibling(out_dir: Path, case_id: str, config: ConfigurationPlan, key: str, content: str) -> bool:
    """Hard-link the case from another configuration that preprocessed it identically (e.g. ``2d`` at
    the ``3d_fullres`` in-plane spacing); False when there is none or links are not possible."""
    for sibling in sorted(p for p in out_dir.parent.iterdir() if p.is_dir() and p != out_dir):
        marker = read_marker(sibling, case_id)
        if marker is None or marker.get("content_key") != content:
            continue
        props = CaseProperties.from_dict(marker["properties"])
        if configured_spacing(config, props.spacing_canonical) != props.target_spacing:
            continue
        try:
            link_case(sibling, out_dir, case_id, {**marker, "plan_key": key})
        except OSError:
            return False
        return True
    return False


def read_case(files: CaseFiles) -> tuple[list[np.ndarray], np.ndarray, Geometry]:
    """Read a training case's channels (float32, :func:`autoseg.io.read_channels`) and label, all on channel 0's
    grid."""
    images, geometry = read_channels(files.images)
    if files.label is None:
        raise fail(files.images[0], "training case has no label file", f"add labelsTr/{files.case_id}.nii.gz")
    seg, geom = read_image(files.label)
    if (error := off_grid(files.label, geom, files.images[0], geometry)) is not None:
        raise error
    return images, seg, geometry


def check_content(files: CaseFiles, images: list[np.ndarray], label: np.ndarray, info: DatasetInfo) -> None:
    """Refuse what would train silently wrong: an all-zero channel, label values dataset.json does not declare
    (they would become background). The same checks as autoseg-plan's, for data that skipped it."""
    for path, image in zip(files.images, images):
        if not image.any():
            raise fail(path, "image is all zero", "re-export the image, or remove the case")
    declared = info.label_values
    if np.isin(label, declared, invert=True).any():
        values = sorted(set(np.unique(label).tolist()) - set(declared))
        raise fail(files.label, f"label value(s) {values} are not declared in dataset.json (declared: {declared})",
                   "fix the label or declare the values in dataset.json")


def process_one(files: CaseFiles, config: ConfigurationPlan, info: DatasetInfo, out_dir: Path, key: str) -> str:
    """Read, preprocess and store one case (the unit of work of a worker), or link an identical one."""
    content = content_key(config, info)
    if reuse_sibling(out_dir, files.case_id, config, key, content):
        return files.case_id
    images, label, geometry = read_case(files)
    check_content(files, images, label, info)
    try:
        data, seg, props = preprocess_case(images, geometry, config, info, label)
    except AutosegError as e:
        raise AutosegError(f"{files.images[0].parent / files.case_id}: {e}") from None
    del images, label
    fg = foreground_locations(seg, info, files.case_id)  # type: ignore[arg-type]
    save_case(out_dir, files.case_id, data, seg, props, fg, key, content)
    return files.case_id


def _process_args(task: tuple) -> tuple[str, str | None]:
    """Worker entry: (case id, None) on success, (case id, one-line problem) for bad input or a case that
    does not fit in memory (which must not stop the other cases, nor leave the case unnamed)."""
    *args, workers = task
    files: CaseFiles = args[0]
    try:
        return process_one(*args), None
    except AutosegError as e:
        return files.case_id, str(e)
    except MemoryError:
        fewer = "run fewer workers at once (-np), or " if workers > 1 else ""
        return files.case_id, str(fail(files.images[0].parent / files.case_id, "out of memory while preprocessing "
                                       "this case", f"{fewer}free memory; if it is much larger than the other cases, "
                                       "check its spacing and size (autoseg-plan warns about such outliers)"))


def prepare_output(out_dir: Path) -> None:
    """Create the configuration folder and make sure files can be written there."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (PermissionError, FileExistsError, NotADirectoryError) as e:
        raise fail(out_dir, f"cannot create the output folder ({e.strerror or e})",
                   "choose a writable data root with --home or fix the permissions") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise fail(out_dir, "output folder is not writable", "fix its permissions or choose another --home")


def preprocess_dataset(paths: DatasetPaths, configuration: str = "3d_fullres", workers: int = 2,
                       shard: tuple[int, int] = (0, 1)) -> list[str]:
    """Preprocess this shard's training cases into ``preprocessed/<dataset>/<configuration>/`` (for a configuration
    with ``data_of``, the cascade, that configuration's folder).

    Complete cases written with the same plan are skipped; returns the ids processed now. A case
    with bad input, or too large for memory, does not stop the others: all such problems are raised
    together at the end, one line per case.
    """
    plans = Plans.load(paths.plans_json)
    config = plans.configuration(configuration, paths.plans_json)
    if config.data_of is not None:   # a cascade reads another configuration's cases (3d_fullres): no second copy
        return preprocess_dataset(paths, config.data_of, workers, shard)
    info, cases = load_dataset(paths.raw)
    out_dir = paths.config_dir(configuration)
    prepare_output(out_dir)
    info.save(paths.preprocessed / "dataset.json")   # training can then run where raw/ is absent
    key = plan_key(config, info)
    mine = shard_items(list(cases), *shard)
    todo = [cid for cid in mine if not is_complete(out_dir, cid, key)]
    tasks = [(cases[cid], config, info, out_dir, key, workers) for cid in todo]
    bar = tqdm(total=len(tasks), desc=f"preprocess {configuration}", unit="case", file=sys.stderr,
               disable=not tasks)
    done: list[str] = []
    problems = ProblemList()
    lock = write_lock(out_dir, f"preprocessing of {configuration}", "preprocess another data root (--home)",
                      lock_name(shard))   # (the jobs of a --shard array each have their own)
    try:  # closing(): Ctrl-C stops the pool here and now, not whenever the suspended generator is collected
        with lock, contextlib.closing(_run(tasks, workers)) as results:
            for cid, problem in results:
                if problem is None:
                    done.append(cid)
                else:
                    problems.add(None, problem)
                bar.update()
    finally:
        bar.close()
    if len(problems) == 1:
        raise AutosegError(problems.items[0])
    problems.raise_if_any(f"preprocessing {configuration} ({len(done)} case(s) done; fix these and rerun)")
    return sorted(done)


def _run(tasks: list[tuple], workers: int) -> Iterator[tuple[str, str | None]]:
    """Results in completion order: in this process for one worker, else in spawn worker processes (one case
    each at a time); a worker killed outright (the out-of-memory killer) fails its case, named."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_process_args, tasks)
        return
    with contextlib.closing(process_map(_process_args, tasks, workers, TASKS_PER_WORKER)) as results:
        for task, result in results:
            if isinstance(result, WorkerDied):
                files: CaseFiles = task[0]
                result = files.case_id, str(fail(files.images[0].parent / files.case_id, f"{result} while "
                                                 "preprocessing this case", "rerun with fewer workers (-np), or "
                                                 "free memory; if the case is much larger than the others, check its "
                                                 "spacing and size"))
            yield result
