"""Trained models as one file to share: export from a data root, predict from it anywhere, import it into
another data root. Opening a model cannot write outside its folder, fill the disk, or run code.

A model (a zip, or the folder it unpacks to) holds::

    autoseg_model.json       manifest: dataset folder, checkpoint kind, trained folders and folds, size and
                             SHA-256 of every other file
    README.md                what the model is: data, configurations, folds, their validation scores, usage
    dataset.json, plans.json the dataset's channels and labels; the plan the folds were trained with
    postprocessing.json      when one was determined (applied by ``autoseg-predict --model``)
    inference_instructions.json, .md   when ``autoseg-find-best`` wrote them; their commands name the data root
                             ``DATA_ROOT``, which ``autoseg-import`` replaces by the root it imports into
    results/FOLDER/fold_N/checkpoint_final.pt      weights only: plan, dataset, fold and network state
    results/FOLDER/fold_N/validation/summary.json  when the fold was validated

FOLDER is the fold folders' parent under ``results/DatasetNNN_Name`` (``3d_fullres``, or
``RECIPE__3d_fullres`` for a non-default recipe), so importing is a copy into the same place.
Checkpoints are read with ``torch.load(weights_only=True)`` only (:func:`autoseg.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from autoseg import __version__
from autoseg.checkpoint import load_checkpoint, plan_hash
from autoseg.dataset import DatasetInfo, is_os_litter
from autoseg.errors import AutosegError, fail
from autoseg.io import atomic_path, read_json, write_bytes_atomic
from autoseg.paths import DATASET_RE, RECIPE_SEPARATOR, DatasetPaths, list_datasets, run_folder_name
from autoseg.plans import Plans
from autoseg.postprocessing import PostprocessingPlan
from autoseg.selection import DATA_ROOT, DATA_ROOT_MEANING, INSTRUCTIONS, instructions_markdown, rebase_commands

MODEL_FORMAT = "autoseg-model-1"
MANIFEST = "autoseg_model.json"
CHECKPOINT_KINDS = ("final", "best", "latest")
TRAINING_STATE = ("optimizer_state", "grad_scaler_state", "sampler_state", "rng_state", "log", "options")
TOP_FILES = ("README.md", "dataset.json", "plans.json", "postprocessing.json", "inference_instructions.json",
             "inference_instructions.md")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
FOLDER_RE = re.compile(rf"^{_NAME}$")
RECIPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
MEMBER_RE = re.compile(
    rf"^(?:{MANIFEST.replace('.', r'[.]')}|{'|'.join(re.escape(n) for n in TOP_FILES)}"
    rf"|results/{_NAME}/fold_(?:\d+|all)/(?:checkpoint_(?:{'|'.join(CHECKPOINT_KINDS)})\.pt|validation/summary\.json))$")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)   # fixed member dates: the same model exports to the same bytes
USE_HINT = "use a model written by autoseg-export"


@dataclass(frozen=True)
class ExtractionLimits:
    """What a model zip may unpack to; the defaults leave room for the largest planned networks."""

    max_members: int = 2000
    max_member_bytes: int = 4 << 30
    max_total_bytes: int = 32 << 30
    max_ratio: float = 100.0             # uncompressed / compressed, for members over ``ratio_floor_bytes``
    ratio_floor_bytes: int = 1 << 20


@dataclass(frozen=True)
class TrainedFolder:
    """One trained configuration (x recipe) in a model: its folder name under results/ and its folds."""

    folder: str
    configuration: str
    recipe: str | None
    folds: tuple[str, ...]

    @classmethod
    def named(cls, folder: str, folds: Sequence[str]) -> TrainedFolder:
        recipe, _, configuration = folder.rpartition(RECIPE_SEPARATOR)
        return cls(folder, configuration, recipe or None, tuple(folds))

    def describe(self) -> str:
        return self.configuration + (f" (recipe {self.recipe})" if self.recipe else "")


@dataclass(frozen=True)
class Manifest:
    """``autoseg_model.json``: what a model holds, with each file's size and SHA-256."""

    dataset: str
    checkpoint: str
    models: tuple[TrainedFolder, ...]
    files: dict[str, dict[str, Any]]
    autoseg_version: str = __version__
    format: str = MODEL_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = [asdict(m) for m in self.models]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: Path) -> Manifest:
        """Validate a manifest read from ``where``; anything unexpected is a one-line refusal."""
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise fail(where, f"not an autoseg model manifest (format {d.get('format') if isinstance(d, dict) else d!r})",
                       USE_HINT)
        try:
            dataset, checkpoint = str(d["dataset"]), str(d["checkpoint"])
            models = tuple(TrainedFolder.named(str(m["folder"]), [str(f) for f in m["folds"]]) for m in d["models"])
            files = {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in d["files"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise fail(where, f"malformed model manifest ({type(e).__name__}: {e})", USE_HINT) from None
        bad = [m.folder for m in models if not FOLDER_RE.match(m.folder)] + [f for m in models for f in m.folds
                                                                           if not re.fullmatch(r"\d+|all", f)]
        if not DATASET_RE.match(dataset) or checkpoint not in CHECKPOINT_KINDS or bad or not models:
            raise fail(where, "malformed model manifest (dataset, checkpoint, folder or fold names)", USE_HINT)
        return cls(dataset, checkpoint, models, files, str(d.get("autoseg_version", "?")))


def checkpoint_member(folder: str, fold: str, checkpoint: str) -> str:
    return f"results/{folder}/fold_{fold}/checkpoint_{checkpoint}.pt"


def summary_member(folder: str, fold: str) -> str:
    return f"results/{folder}/fold_{fold}/validation/summary.json"


# ---- export -------------------------------------------------------------------------------------------

def recipe_folder(configuration: str, recipe: str | None) -> str:
    """The results/ folder name of a configuration trained with a recipe (none or the default: the plain name)."""
    return run_folder_name(configuration, recipe or None)


def fold_dir(paths: DatasetPaths, folder: str, fold: str) -> Path:
    """A fold folder of ``results/DATASET/FOLDER``, through the paths API."""
    tf = TrainedFolder.named(folder, ())
    return paths.fold_dir(tf.configuration, fold, recipe=tf.recipe)


def find_trained(paths: DatasetPaths, checkpoint: str = "final") -> tuple[list[TrainedFolder], list[str]]:
    """Every folder under ``results/DATASET`` with a fold holding ``checkpoint_CHECKPOINT.pt``, and one note per
    fold folder without it (a run not finished)."""
    found, unfinished = [], []
    if not paths.results.is_dir():
        return found, unfinished
    name = f"checkpoint_{checkpoint}.pt"
    for folder in sorted(p for p in paths.results.iterdir() if p.is_dir() and FOLDER_RE.match(p.name)):
        folds = []
        for fold in sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*") if p.is_dir()):
            if not re.fullmatch(r"\d+|all", fold):
                continue
            if (fold_dir(paths, folder.name, fold) / name).is_file():
                folds.append(fold)
            else:
                unfinished.append(f"{folder.name}/fold_{fold} has no {name} (not finished): not exported")
        if folds:
            found.append(TrainedFolder.named(folder.name, sorted(folds, key=_fold_key)))
    return found, unfinished


def _fold_key(fold: str) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def default_folds(folds: Sequence[str]) -> tuple[str, ...]:
    """What prediction averages by default: the cross-validation folds, or ``all`` when there are none."""
    cv = tuple(f for f in folds if f != "all")
    return cv or tuple(f for f in folds if f == "all")


def select_trained(found: list[TrainedFolder], configurations: Sequence[str] | None, recipe: str | None,
                   folds: Sequence[str] | None, where: Path) -> list[TrainedFolder]:
    """The folders and folds to export: ``configurations`` (all trained by default), of ``recipe`` when given,
    with ``folds`` (each must be trained) or the default folds."""
    chosen = [t for t in found if (not configurations or t.configuration in configurations or t.folder in configurations)
              and (recipe is None or recipe_folder(t.configuration, recipe) == t.folder)]
    if not chosen:
        trained = ", ".join(t.folder for t in found) or "none"
        wanted = " ".join(configurations or ["any configuration"]) + (f" with recipe {recipe}" if recipe else "")
        raise fail(where, f"no trained fold of {wanted} (trained: {trained})",
                   "train it first (autoseg-train), or choose with -c/--recipe")
    out = []
    for t in chosen:
        if folds is None:
            out.append(TrainedFolder.named(t.folder, default_folds(t.folds)))
            continue
        missing = [f for f in folds if f not in t.folds]
        if missing:
            raise fail(where / t.folder, f"fold(s) {' '.join(missing)} not trained (trained: {' '.join(t.folds)})",
                       "train them first, or choose folds with -f")
        out.append(TrainedFolder.named(t.folder, list(folds)))
    return out


def weights_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without its training state (optimizer, scaler, RNG, log, options): what prediction needs."""
    return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}


@dataclass
class ExportReport:
    """What :func:`export_model` wrote, and notes for the user (folds not exported and why)."""

    path: Path
    manifest: Manifest
    notes: list[str] = field(default_factory=list)


def export_model(paths: DatasetPaths, out: str | Path, configurations: Sequence[str] | None = None,
                 recipe: str | None = None, folds: Sequence[int | str] | None = None, checkpoint: str = "final",
                 postprocessing: str | Path | None = None) -> ExportReport:
    """Write the trained folds of ``paths`` as one model zip at ``out`` (see the module docstring)."""
    out = Path(out)
    if checkpoint not in CHECKPOINT_KINDS:
        raise fail(None, f"--checkpoint {checkpoint!r} unknown", f"use one of {', '.join(CHECKPOINT_KINDS)}")
    found, unfinished = find_trained(paths, checkpoint)
    chosen = select_trained(found, configurations, recipe, None if folds is None else [str(f) for f in folds],
                            paths.results)
    members: dict[str, bytes] = {}
    plans: dict[str, Any] | None = None
    info: DatasetInfo | None = None
    for t in chosen:
        for fold in t.folds:
            src = fold_dir(paths, t.folder, fold)
            ckpt = load_checkpoint(src / f"checkpoint_{checkpoint}.pt", dataset=paths.name, fold=fold)
            buffer = io.BytesIO()
            torch.save(weights_only(ckpt), buffer)
            members[checkpoint_member(t.folder, fold, checkpoint)] = buffer.getvalue()
            summary = src / "validation" / "summary.json"
            if summary.is_file():
                members[summary_member(t.folder, fold)] = _json_bytes(read_json(summary), summary)
            plans = plans or _plans_of(paths, ckpt)
            info = info or DatasetInfo.from_dict(ckpt["dataset"], src)
    assert info is not None   # select_trained gives at least one fold
    members["dataset.json"] = _json_bytes(info.to_dict(), paths.dataset_json)
    members["plans.json"] = _json_bytes(plans, paths.plans_json)
    post = _postprocessing_file(paths, chosen, postprocessing)
    if post is not None:
        PostprocessingPlan.load(post)   # refuse a malformed file now, not on the receiving side
        members["postprocessing.json"] = _json_bytes(read_json(post), post)
    if (source := paths.results / f"{INSTRUCTIONS}.json").is_file():
        members.update(instructions_files(source, source, str(paths.root.resolve()), DATA_ROOT))
    manifest = Manifest(paths.name, checkpoint, tuple(chosen), {})
    members["README.md"] = model_readme(manifest, info, members, post is not None).encode()
    files = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in members.items()}
    manifest = Manifest(paths.name, checkpoint, tuple(chosen), files)
    members[MANIFEST] = _json_bytes(manifest.to_dict(), out)
    with atomic_path(out, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for name in sorted(members, key=lambda n: (n != MANIFEST, n)):
                entry = zipfile.ZipInfo(name, _ZIP_DATE)
                entry.external_attr = 0o644 << 16
                # weights deflate by 7 % at ~5 MB/s of CPU: stored, they export and open at disk speed
                method = zipfile.ZIP_STORED if name.endswith(".pt") else zipfile.ZIP_DEFLATED
                zf.writestr(entry, members[name], method)
    return ExportReport(out, manifest, unfinished)


def _json_bytes(obj: Any, where: Path) -> bytes:
    try:
        return (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode()
    except (TypeError, ValueError) as e:
        raise fail(where, f"cannot be written as JSON ({e})", "regenerate the file") from None


def _plans_of(paths: DatasetPaths, ckpt: dict[str, Any]) -> dict[str, Any]:
    """plans.json of the data root when it holds the checkpoint's plan, else a plan of that one configuration."""
    config = ckpt["configuration"]
    if paths.plans_json.is_file():
        plans = read_json(paths.plans_json)
        configs = plans.get("configurations", {}) if isinstance(plans, dict) else {}
        if configs.get(config.get("name")) is not None:
            return plans
    raise fail(paths.plans_json, f"plans.json missing or without configuration {config.get('name')!r}, which the "
               "checkpoints were trained with", "restore the plans.json the folds were trained with")


def _postprocessing_file(paths: DatasetPaths, chosen: list[TrainedFolder], given: str | Path | None) -> Path | None:
    """``--postprocess FILE``, else ``results/DATASET/postprocessing.json``, else the one folder's own."""
    if given is not None:
        if not Path(given).is_file():
            raise fail(given, "postprocessing file not found", "write it with autoseg-evaluate --determine-postprocessing")
        return Path(given)
    candidates = [paths.results / "postprocessing.json"]
    if len(chosen) == 1:
        candidates.append(paths.results / chosen[0].folder / "postprocessing.json")
    return next((c for c in candidates if c.is_file()), None)


def instructions_files(source: Path, where: Path, old: str, new: str) -> dict[str, bytes]:
    """inference_instructions.json and .md from the JSON ``source``, its commands moved from the data root ``old``
    to ``new``: the zip's name ``DATA_ROOT`` (declared as a placeholder), an imported copy the root it is in.
    A malformed file is refused in one line naming ``where`` (the file as the user knows it)."""
    try:
        instructions = rebase_commands(json.loads(source.read_bytes()), old, new)
        placeholders = {k: v for k, v in instructions["placeholders"].items() if k != DATA_ROOT}
        instructions["placeholders"] = placeholders | ({DATA_ROOT: DATA_ROOT_MEANING} if new == DATA_ROOT else {})
        return {f"{INSTRUCTIONS}.json": _json_bytes(instructions, where),
                f"{INSTRUCTIONS}.md": instructions_markdown(instructions).encode()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise fail(where, f"malformed inference instructions ({type(e).__name__}: {e})",
                   "rerun autoseg-find-best in the data root that trained the model, then export again") from None


def model_readme(manifest: Manifest, info: DatasetInfo, members: dict[str, bytes], postprocessing: bool) -> str:
    """The model's README.md: data, configurations and folds, their validation scores, how to use it."""
    lines = [f"# {manifest.dataset}: autoseg model", "",
             f"Exported with `autoseg-export` (autoseg {manifest.autoseg_version}); "
             f"checkpoint `{manifest.checkpoint}` of each fold, weights only.", "", "## Data", "",
             "- channels: " + ", ".join(f"{k} {v}" for k, v in info.channel_names.items()),
             "- " + ("regions" if info.region_based else "labels") + ": "
             + ", ".join(f"{n} {v}" for n, v in info.labels.items() if n != "background"),
             f"- training cases: {info.num_training}, files `{info.file_ending}`", "", "## Models", "",
             "| configuration | recipe | folds | patch | spacing (mm) |", "| --- | --- | --- | --- | --- |"]
    plans = json.loads(members["plans.json"]).get("configurations", {})
    for t in manifest.models:
        plan = plans.get(t.configuration, {})
        lines.append(f"| {t.configuration} | {t.recipe or 'default'} | {' '.join(t.folds)} | "
                     f"{'x'.join(map(str, plan.get('patch_size', [])))} | "
                     f"{'x'.join(f'{s:g}' for s in plan.get('spacing', []))} |")
    lines += ["", "## Validation", ""]
    lines += _score_lines(manifest, info, members) or ["No fold was validated (trained with --no-validation)."]
    lines += ["", "## Use", "", "```", "autoseg-predict --model MODEL.zip -i INPUT_FOLDER -o OUTPUT_FOLDER"
              + (" -c CONFIGURATION" if len(manifest.models) > 1 else ""),
              "autoseg-import MODEL.zip            # into a data root; then autoseg-predict -d "
              f"{manifest.dataset[7:10].lstrip('0') or '0'} ...", "```", "",
              "Inputs: one file per channel, `CASE_0000" + info.file_ending + "` ... in the channel order above "
              "(or BraTS case folders).",
              "Postprocessing (`postprocessing.json`) is applied by `autoseg-predict --model` unless "
              "`--no-postprocess` is given." if postprocessing else "No postprocessing was determined for this model."]
    return "\n".join(lines) + "\n"


def _score_lines(manifest: Manifest, info: DatasetInfo, members: dict[str, bytes]) -> list[str]:
    """Mean Dice per region of each validated fold, from its validation/summary.json."""
    names = info.foreground_names
    rows = []
    for t in manifest.models:
        for fold in t.folds:
            data = members.get(summary_member(t.folder, fold))
            if data is None:
                continue
            summary = json.loads(data)
            mean = summary.get("mean", {}) if isinstance(summary, dict) else {}
            dice = [mean.get(n, {}).get("dice") if isinstance(mean.get(n), dict) else None for n in names]
            cases = len(summary.get("cases", {})) if isinstance(summary.get("cases"), dict) else "?"
            space = summary.get("space", "?")
            rows.append(f"| {t.describe()} | {fold} | {cases} | {space} | "
                        + " | ".join("-" if d is None else f"{d:.4f}" for d in dice) + " |")
    if not rows:
        return []
    return ["Mean Dice over each fold's held-out cases (`validation/summary.json`).", "",
            "| configuration | fold | cases | space | " + " | ".join(names) + " |",
            "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |", *rows]


# ---- opening a model (zip or folder) ------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFolder:
    """An unpacked, checked model: its manifest and where its files are."""

    root: Path
    manifest: Manifest
    origin: Path

    @classmethod
    def read(cls, root: Path, origin: Path | None = None) -> ModelFolder:
        """Check the manifest and that every file it lists is a regular file inside ``root`` with its size and
        SHA-256 (a model changed after export, or a folder with links out of it, is refused)."""
        origin = origin or root
        if not (root / MANIFEST).is_file():
            raise fail(origin, f"no {MANIFEST}: not an autoseg model", USE_HINT)
        manifest = Manifest.from_dict(read_json(root / MANIFEST), origin / MANIFEST)
        needed = {"dataset.json", "plans.json"} | {checkpoint_member(t.folder, f, manifest.checkpoint)
                                                   for t in manifest.models for f in t.folds}
        missing = sorted(needed - set(manifest.files))
        if missing:
            raise fail(origin, f"the manifest does not list {missing[0]}", USE_HINT)
        for name, entry in manifest.files.items():
            if not MEMBER_RE.match(name) or name == MANIFEST:
                raise fail(origin, f"the manifest lists {name!r}, which is not part of an autoseg model", USE_HINT)
            path = root / name
            if not path.is_file() or path.is_symlink() or not _inside(path, root):
                raise fail(origin, f"{name} is missing or not a plain file inside the model", USE_HINT)
            if path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
                raise fail(origin, f"{name} differs from the manifest (changed or damaged after export)",
                           "export the model again")
        return cls(root, manifest, origin)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.load(self.root / "dataset.json")

    def select(self, configuration: str | None = None, recipe: str | None = None) -> TrainedFolder:
        """The trained folder for ``configuration`` (a configuration or a folder name) and ``recipe``; either may
        be left out when the model holds one match."""
        matches = [t for t in self.manifest.models
                   if (configuration is None or configuration in (t.configuration, t.folder))
                   and (recipe is None or recipe_folder(t.configuration, recipe) == t.folder)]
        held = ", ".join(t.folder for t in self.manifest.models)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            wanted = (configuration or "any configuration") + (f" with recipe {recipe}" if recipe else "")
            raise fail(self.origin, f"the model holds no {wanted} (it holds: {held})", "choose one of those with -c")
        raise fail(self.origin, f"the model holds several configurations ({held})", "choose one with -c")

    def checkpoints(self, trained: TrainedFolder, folds: Sequence[int | str] | None = None) -> tuple[list[Path], list[str]]:
        """Checkpoint paths and fold names of ``trained``: ``folds``, or the model's default folds."""
        chosen = default_folds(trained.folds) if folds is None else tuple(str(f) for f in folds)
        missing = [f for f in chosen if f not in trained.folds]
        if missing:
            raise fail(self.origin, f"fold(s) {' '.join(missing)} not in the model ({trained.folder} has "
                       f"{' '.join(trained.folds)})", "choose folds the model holds with -f")
        return [self.root / checkpoint_member(trained.folder, f, self.manifest.checkpoint) for f in chosen], list(chosen)

    def expected_configuration(self, trained: TrainedFolder) -> dict[str, Any]:
        """The plan of ``trained`` from the model's plans.json (its checkpoints must match it)."""
        return asdict(Plans.load(self.root / "plans.json").configuration(trained.configuration,
                                                                           self.origin / "plans.json"))

    def postprocessing(self) -> PostprocessingPlan | None:
        path = self.root / "postprocessing.json"
        return PostprocessingPlan.load(path) if path.is_file() else None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _sha256(source: Path | bytes) -> str:
    """SHA-256 of a file, or of the bytes to write."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    h = hashlib.sha256()
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def open_model(source: str | Path, limits: ExtractionLimits = ExtractionLimits()) -> Iterator[ModelFolder]:
    """A model zip (unpacked into a temporary folder removed afterwards) or a model folder, checked."""
    source = Path(source)
    if source.is_dir():
        yield ModelFolder.read(source)
    elif source.is_file():
        with tempfile.TemporaryDirectory(prefix="autoseg-model-") as tmp:
            extract_model_zip(source, Path(tmp), limits)
            yield ModelFolder.read(Path(tmp), source)
    else:
        raise fail(source, "model not found", "give the .zip written by autoseg-export, or its unpacked folder")


def extract_model_zip(source: Path, target: Path, limits: ExtractionLimits = ExtractionLimits()) -> None:
    """Unpack the members of an autoseg model zip into the empty folder ``target``, or refuse the whole zip in
    one line: names outside the model's layout (``../``, absolute, drive or backslash names), links, duplicate
    or encrypted members, and sizes or compression ratios over ``limits`` (checked on the declared sizes before
    anything is written, and again on the bytes actually read)."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise fail(source, f"not a readable zip file ({e})", "give the .zip written by autoseg-export") from None
    with zf:
        members = _checked_members(zf, source, limits)
        free = shutil.disk_usage(target).free
        total = sum(info.file_size for _, info in members)
        if total > free:
            raise fail(source, f"unpacks to {total / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB are free in "
                       f"{target}", "free disk space, or set TMPDIR to a larger disk")
        for name, info in members:
            dest = target.joinpath(*PurePosixPath(name).parts)
            if not _inside(dest, target):   # unreachable with the name pattern; kept as a second wall
                raise fail(source, f"refused: member {info.filename!r} would be written outside the model folder",
                           USE_HINT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _copy_limited(zf, info, dest, source, limits)


def _checked_members(zf: zipfile.ZipFile, source: Path, limits: ExtractionLimits) -> list[tuple[str, zipfile.ZipInfo]]:
    """(name inside the model, member) for every member to unpack; refuse the zip on the first bad one."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise fail(source, f"refused: {len(infos)} members (at most {limits.max_members})", USE_HINT)
    names = [i.filename for i in infos]
    prefix = _common_folder(names)
    members, seen, total = [], set(), 0
    for info in infos:
        raw = info.filename
        if any(is_os_litter(part) for part in raw.split("/")):
            continue   # __MACOSX/, .DS_Store: added by archivers, never unpacked
        if stat.S_ISLNK(info.external_attr >> 16):
            raise fail(source, f"refused: member {raw!r} is a symbolic link", USE_HINT)
        name = raw[len(prefix):] if prefix and raw.startswith(prefix) else raw
        if info.is_dir():
            if name and not all(FOLDER_RE.match(p) for p in name.rstrip("/").split("/")):
                raise fail(source, f"refused: folder {raw!r} is not part of an autoseg model", USE_HINT)
            continue
        if not MEMBER_RE.match(name):
            raise fail(source, f"refused: member {raw!r} is not part of an autoseg model (a path outside the "
                       "model's layout)", USE_HINT)
        if name in seen:
            raise fail(source, f"refused: member {raw!r} appears twice", USE_HINT)
        if info.flag_bits & 0x1:
            raise fail(source, f"refused: member {raw!r} is encrypted", USE_HINT)
        if info.file_size > limits.max_member_bytes:
            raise fail(source, f"refused: member {raw!r} unpacks to {info.file_size} bytes (at most "
                       f"{limits.max_member_bytes})", USE_HINT)
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise fail(source, f"refused: member {raw!r} is compressed {info.file_size / max(1, info.compress_size):.0f}"
                       f"-fold (at most {limits.max_ratio:g}; a zip bomb?)", USE_HINT)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise fail(source, f"refused: unpacks to more than {limits.max_total_bytes} bytes", USE_HINT)
        seen.add(name)
        members.append((name, info))
    if MANIFEST not in seen:
        raise fail(source, f"no {MANIFEST}: not an autoseg model", USE_HINT)
    return members


def _common_folder(names: list[str]) -> str:
    """``FOLDER/`` when the manifest lies in one top folder (a model re-zipped with its folder), else ''."""
    if MANIFEST in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names if "/" in n and not is_os_litter(n.split("/", 1)[0])}
    if len(tops) == 1 and FOLDER_RE.match(top := tops.pop()) and f"{top}/{MANIFEST}" in names:
        return f"{top}/"
    return ""


def _copy_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, source: Path,
                  limits: ExtractionLimits) -> None:
    """Copy one member, counting the bytes read: a header that lies about the size cannot unpack more."""
    allowed = min(info.file_size, limits.max_member_bytes)
    written = 0
    try:
        with zf.open(info) as src, open(dest, "xb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > allowed:
                    raise fail(source, f"refused: member {info.filename!r} unpacks to more than its declared size",
                               USE_HINT)
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, zlib.error) as e:
        raise fail(source, f"member {info.filename!r} is damaged or uses an unsupported method ({e})",
                   "download or export the model again") from None


# ---- import -------------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    """What :func:`import_model` did: the dataset it went to, files written and files already there."""

    paths: DatasetPaths
    manifest: Manifest
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)


def import_model(source: str | Path, root: str | Path, limits: ExtractionLimits = ExtractionLimits()) -> ImportReport:
    """Add a model's folds, plan, dataset.json and postprocessing to the data root ``root``.

    Everything is checked before anything is written: every checkpoint loads safely and fits the plan; an
    existing file with other content (another model's fold, another plan) refuses the import; a file with the
    same content is left as it is, so importing twice is harmless. The inference instructions are compared and
    written with ``DATA_ROOT`` replaced by ``root``.
    """
    root = Path(root)
    with open_model(source, limits) as model:
        manifest = model.manifest
        paths = DatasetPaths(root, manifest.dataset)
        other = [n for n in list_datasets(root) if n != paths.name and n[7:10] == paths.name[7:10]]
        if other:
            raise fail(root, f"dataset number {paths.name[7:10]} is already used here by {other[0]}",
                       "import into another data root with --home")
        plans = Plans.load(model.root / "plans.json")
        for t in manifest.models:
            planned = asdict(plans.configuration(t.configuration, model.origin / "plans.json"))
            for path in model.checkpoints(t, t.folds)[0]:
                load_checkpoint(path, planned, dataset=paths.name, fold=path.parent.name.removeprefix("fold_"))
        _check_plans_fit(model, paths, plans)
        copies = _import_targets(model, paths)
        conflicts = [dst for src, dst in copies if dst.exists() and (not dst.is_file() or _sha256(dst) != _sha256(src))]
        if conflicts:
            raise fail(conflicts[0], "already exists with other content (another model or training run)",
                       "delete it to replace it, or import into another data root with --home")
        report = ImportReport(paths, manifest)
        if not paths.plans_json.is_file():
            write_bytes_atomic(paths.plans_json, (model.root / "plans.json").read_bytes())
            report.written.append(paths.plans_json)
        for src, dst in copies:
            if dst.exists():
                report.unchanged.append(dst)
                continue
            _write(src, dst)
            report.written.append(dst)
    return report


def _import_targets(model: ModelFolder, paths: DatasetPaths) -> list[tuple[Path | bytes, Path]]:
    """(file in the model, or the bytes to write for it, and where it goes in the data root)."""
    json_name = f"{INSTRUCTIONS}.json"
    rewritten = (instructions_files(model.root / json_name, model.origin / json_name, DATA_ROOT,
                                    str(paths.root.resolve())) if json_name in model.manifest.files else {})
    out: list[tuple[Path | bytes, Path]] = []
    for name in model.manifest.files:
        src = rewritten.get(name, model.root / name)
        if name.startswith("results/"):
            folder, fold, rest = name.split("/", 3)[1:]
            out.append((src, fold_dir(paths, folder, fold.removeprefix("fold_")) / rest))
        elif name in ("postprocessing.json", "inference_instructions.json", "inference_instructions.md"):
            out.append((src, paths.results / name))
        elif name == "README.md":
            out.append((src, paths.results / "model_README.md"))
        elif name == "dataset.json" and not paths.dataset_json.is_file():
            out.append((src, paths.preprocessed / "dataset.json"))
    return out


def _write(source: Path | bytes, dst: Path) -> None:
    """Write ``dst`` atomically with a file's content or with bytes."""
    if isinstance(source, bytes):
        write_bytes_atomic(dst, source)
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(source, tmp)


def _check_plans_fit(model: ModelFolder, paths: DatasetPaths, plans: Plans) -> None:
    """Refuse a plans.json of the data root that plans the model's configurations differently."""
    if not paths.plans_json.is_file():
        return
    here = Plans.load(paths.plans_json)
    for t in model.manifest.models:
        mine = here.configurations.get(t.configuration)
        theirs = plans.configuration(t.configuration)
        if mine is not None and plan_hash(asdict(mine)) != plan_hash(asdict(theirs)):
            raise fail(paths.plans_json, f"plans {t.configuration} differently from the model (network, patch, spacing "
                       "or normalisation)", "import into another data root with --home")


# ---- predicting from a model --------------------------------------------------------------------------

def predictor_from_model(source: str | Path, configuration: str | None = None, recipe: str | None = None,
                         folds: Sequence[int | str] | None = None, checkpoint: str | None = None,
                         limits: ExtractionLimits = ExtractionLimits(), **options: Any
                         ) -> tuple[Any, PostprocessingPlan | None]:
    """A :class:`~autoseg.inference.predictor.Predictor` of a model's folds (no data root needed) and the
    model's postprocessing (None when it has none); the same networks as predicting from the data root."""
    from autoseg.inference.predictor import Predictor
    with open_model(source, limits) as model:
        if checkpoint is not None and checkpoint != model.manifest.checkpoint:
            raise fail(source, f"the model holds checkpoint_{model.manifest.checkpoint}.pt of each fold, not "
                       f"checkpoint_{checkpoint}.pt", "leave out --checkpoint, or export the model with that one")
        trained = model.select(configuration, recipe)
        paths, fold_names = model.checkpoints(trained, folds)
        with _errors_name(model):
            predictor = Predictor.from_checkpoints(paths, expected_configuration=model.expected_configuration(trained),
                                                   dataset=model.manifest.dataset, folds=fold_names, **options)
        stage = predictor.config.previous_stage
        if stage is not None:   # (docs/cascade.md)
            raise fail(source, f"{predictor.config.name} predicts from the segmentation of {stage}, which a model "
                       "does not carry", f"predict in the data root that trained both: autoseg-predict -d DATASET -c "
                       f"{predictor.config.name}")
        with _errors_name(model):
            return predictor, model.postprocessing()


@contextlib.contextmanager
def _errors_name(model: ModelFolder) -> Iterator[None]:
    """Errors about files of an unpacked zip name them inside the zip, not in the temporary folder."""
    try:
        yield
    except AutosegError as e:
        if model.origin == model.root:
            raise
        raise AutosegError(str(e).replace(str(model.root), str(model.origin))) from None
