"""Recipes: how to train, as a named JSON document (a shipped ``autoseg/recipe_files/NAME.json`` or any
``FILE.json``).

The plan says what fits the data and the hardware (patch, batch, topology); a recipe says how to train
on it: network (an architecture and overrides of the plan's network), loss, optimiser, learning-rate
schedule, deep-supervision weights, foreground sampling, gradient accumulation and training length.
Every field has the default of the ``nnunet`` recipe, autoseg's method, so ``Recipe()`` *is* that
recipe and ``{"name": "mine", "loss": {"name": "dice_focal"}}`` is nnunet with a focal loss.

A recipe is parsed strictly: an unknown key, a value of the wrong type or out of range is one line
naming the file, the key and the fix. Which names exist that only the dataset or the network registry
can tell (an architecture, a region named in ``loss.weights``) is checked when training starts.
Folds trained with a recipe live in ``results/DATASET/RECIPE__CONFIG/`` (the default recipe's in
``results/DATASET/CONFIG/``, see :func:`autoseg.paths.run_folder_name`), and the checkpoint stores it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autoseg.errors import fail
from autoseg.paths import DEFAULT_RECIPE
from autoseg.plans import NetworkPlan

RECIPES_DIR = Path(__file__).resolve().parent / "recipe_files"   # package data: a wheel install ships them too
LOSSES = ("dice_ce", "dice_bce", "dice_focal")
DICE_FORMS = ("log", "linear")
OPTIMISERS = ("sgd", "adamw")
SCHEDULES = ("poly", "warmup_cosine")
DEEP_SUPERVISION = ("halving", "off")
FOREGROUND_MODES = ("batch", "sample")
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]|_(?!_))*$")   # a folder-name part: no "__", the RECIPE__CONFIG separator
INVALID = object()   # what a value check returns for a bad value (None may be valid)
LENGTH_KEYS = ("epochs", "iters_per_epoch")   # may change when a run is resumed (extended)
# network.kwargs keys besides the arch: derived features, and NetworkPlan fields a recipe may set
FEATURE_KEYS = ("base_features", "max_features")
NETWORK_FIELDS = ("n_conv_encoder", "n_conv_decoder", "region_head")


@dataclass(frozen=True)
class NetworkChoice:
    """``arch`` None keeps the plan's architecture; ``kwargs`` override the plan's network:
    ``base_features``/``max_features`` (features double per stage from base up to max), ``n_conv_encoder``
    and ``n_conv_decoder`` (one number, or a list per stage whose last value repeats), ``region_head``."""

    arch: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossChoice:
    """``dice_ce``: soft Dice + cross-entropy of the dataset's outputs (softmax over labels, or one sigmoid
    per region: binary cross-entropy, nnU-Net's rule); ``dice_bce``: the same, for region datasets only;
    ``dice_focal``: soft Dice + focal loss with ``focal_gamma``. ``dice``: "log" (-log Dice where a region
    is present) or "linear" (1 - Dice). ``weights``: per region or class name (others 1), in both terms.
    ``patterns``: with the nested region head, also the label patterns' cross-entropy + soft Dice (else a pattern
    that is no region's own, necrosis, gets no gradient once unlikely; autoseg.network.regions); checkpoints
    from before the field were trained without it. ``patterns_dice``: that term's Dice form, apart from the
    regions' (-log keeps a pattern of ~1 % of the voxels alive; checkpoints from before the field used ``dice``)."""

    name: str = "dice_ce"
    dice: str = "log"
    weights: Mapping[str, float] = field(default_factory=dict)
    focal_gamma: float = 2.0
    patterns: bool = True
    patterns_dice: str = "log"


@dataclass(frozen=True)
class OptimiserChoice:
    """``sgd`` (``momentum``, ``nesterov``) or ``adamw`` (``betas``); both take ``lr`` and ``weight_decay``."""

    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class ScheduleChoice:
    """Learning rate per epoch: ``poly`` (``exponent``) or ``warmup_cosine`` (linear warm-up over the first
    ``warmup`` share of the epochs, then cosine down to ``min_lr``); see :mod:`autoseg.training.schedule`."""

    name: str = "poly"
    exponent: float = 0.9
    warmup: float = 0.05
    min_lr: float = 0.0


@dataclass(frozen=True)
class ForegroundChoice:
    """Share of patches centred on foreground: ``share`` None takes the plan's (0.33). ``mode`` "batch":
    the last ``round(bs * share)`` samples of each batch (nnU-Net; at batch 2 any share in (0.25, 0.75)
    is one of two); "sample": each sample independently with probability ``share``."""

    share: float | None = None
    mode: str = "batch"


@dataclass(frozen=True)
class Recipe:
    """A named way to train; the defaults are the ``nnunet`` recipe. ``deep_supervision``: "halving"
    (nnU-Net's 1, 1/2, 1/4, ..., lowest 0, normalised), "off", or explicit weights, full resolution first.
    ``accumulation``: batches whose gradients add up to one optimiser step; ``iters_per_epoch`` counts steps."""

    name: str = DEFAULT_RECIPE
    description: str = "nnU-Net's method: plan's network, Dice+CE, SGD, poly LR, halving deep supervision"
    network: NetworkChoice = field(default_factory=NetworkChoice)
    loss: LossChoice = field(default_factory=LossChoice)
    optimiser: OptimiserChoice = field(default_factory=OptimiserChoice)
    schedule: ScheduleChoice = field(default_factory=ScheduleChoice)
    deep_supervision: str | tuple[float, ...] = "halving"
    foreground: ForegroundChoice = field(default_factory=ForegroundChoice)
    accumulation: int = 1
    epochs: int = 1000
    iters_per_epoch: int = 250
    source: str = field(default="", compare=False)   # the file it was read from, for messages; not saved

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_RECIPE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, only the keys that apply (``momentum`` for sgd, not adamw): parses back equal."""
        d = asdict(self)
        del d["source"]
        d["network"]["kwargs"] = dict(self.network.kwargs)
        d["loss"]["weights"] = dict(self.loss.weights)
        if self.loss.name != "dice_focal":
            del d["loss"]["focal_gamma"]
        unused = ("betas",) if self.optimiser.name == "sgd" else ("momentum", "nesterov")
        for key in unused:
            del d["optimiser"][key]
        d["optimiser"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["optimiser"].items()}
        for key in ("warmup", "min_lr") if self.schedule.name == "poly" else ("exponent",):
            del d["schedule"][key]
        if isinstance(self.deep_supervision, tuple):
            d["deep_supervision"] = list(self.deep_supervision)
        return d

    def with_overrides(self, **values: Any) -> Recipe:
        """This recipe with single fields replaced (None leaves a field): ``epochs``, ``iters_per_epoch``, ``lr``,
        ``dice``, ``foreground`` (share), ``foreground_mode``, ``accumulation`` (the command-line options)."""
        v = {k: x for k, x in values.items() if x is not None}
        unknown = set(v) - {"epochs", "iters_per_epoch", "lr", "dice", "foreground", "foreground_mode", "accumulation"}
        if unknown:
            raise TypeError(f"unknown recipe override(s): {', '.join(sorted(unknown))}")
        loss = replace(self.loss, dice=v.get("dice", self.loss.dice))
        optimiser = replace(self.optimiser, lr=v.get("lr", self.optimiser.lr))
        fg = replace(self.foreground, share=v.get("foreground", self.foreground.share),
                     mode=v.get("foreground_mode", self.foreground.mode))
        out = replace(self, loss=loss, optimiser=optimiser, foreground=fg,
                      **{k: v[k] for k in ("epochs", "iters_per_epoch", "accumulation") if k in v})
        return replace(parse_recipe(out.to_dict(), self.source or "the command-line options"), source=self.source)

    def differences(self, other: Recipe, ignore: Sequence[str] = (*LENGTH_KEYS, "description")) -> list[tuple[str, Any, Any]]:
        """``(dotted key, this value, other's)`` for every field that differs, except ``ignore``."""
        a, b = _flatten(self.to_dict()), _flatten(other.to_dict())
        return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                if k not in ignore and a.get(k) != b.get(k)]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k not in ("kwargs", "weights"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---- parsing --------------------------------------------------------------------------------------------
class _Reader:
    """Reads one JSON object of a recipe; every problem is one line naming the file and the key."""

    def __init__(self, data: Any, where: str | Path, prefix: str, keys: Sequence[str]) -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(data, Mapping):
            raise self.bad(prefix.rstrip(".") or "the recipe", f"must be a JSON object, not {json.dumps(data)}",
                           "see docs/recipes.md for the format")
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise fail(where, f"unknown key '{prefix}{unknown[0]}'",
                       f"remove it, or use one of {', '.join(keys)} (docs/recipes.md)")
        self.data = data

    def bad(self, key: str, problem: str, fix: str):
        return fail(self.where, f"{key} {problem}", fix)

    def get(self, key: str, default: Any, check, example: str) -> Any:
        """``check(value)`` returns the parsed value or INVALID; ``example`` is a valid ``"key": value``."""
        if key not in self.data:
            return default
        value = self.data[key]
        parsed = check(value)
        if parsed is INVALID:
            raise self.bad(f"{self.prefix}{key}", f"= {json.dumps(value)} is not valid", f"e.g. {example}")
        return parsed

    def choice(self, key: str, default: str, options: Sequence[str]) -> str:
        value = self.data.get(key, default)
        if value not in options:
            raise self.bad(f"{self.prefix}{key}", f"{json.dumps(value)} is not known", f"use one of {', '.join(options)}")
        return value


def _number(low: float | None = None, high: float | None = None, above: float | None = None, kind: type = float):
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            return INVALID
        v = kind(v)
        if not math.isfinite(v) or (low is not None and v < low) or (high is not None and v > high) \
                or (above is not None and v <= above):
            return INVALID
        return v
    return check


def _bool(v: Any) -> Any:
    return v if isinstance(v, bool) else INVALID


def _text(v: Any) -> Any:
    return v if isinstance(v, str) else INVALID


def _weights_list(v: Any) -> Any:
    """Explicit deep-supervision weights: numbers >= 0, the full resolution's above 0."""
    if not isinstance(v, list) or not v:
        return INVALID
    parsed = [_number(low=0.0)(x) for x in v]
    return INVALID if any(x is INVALID for x in parsed) or not parsed[0] else tuple(float(x) for x in parsed)


def _name_weights(v: Any) -> Any:
    if not isinstance(v, Mapping):
        return INVALID
    parsed = {k: _number(low=0.0)(x) for k, x in v.items()}
    return INVALID if any(x is INVALID for x in parsed.values()) else {k: float(x) for k, x in parsed.items()}


def _blocks(v: Any) -> Any:
    check = _number(low=1, kind=int)
    if isinstance(v, list):
        parsed = [check(x) for x in v]
        return INVALID if not parsed or any(x is INVALID for x in parsed) else parsed
    return check(v)


def _network(data: Any, where: str | Path) -> NetworkChoice:
    r = _Reader(data, where, "network.", ("arch", "kwargs"))
    arch = r.get("arch", None, lambda v: v if v is None or (isinstance(v, str) and v) else INVALID,
                 '"arch": "resenc_unet" (or null for the plan\'s)')
    kwargs = r.get("kwargs", {}, lambda v: dict(v) if isinstance(v, Mapping) else INVALID, '"kwargs": {"max_features": 256}')
    allowed = (*FEATURE_KEYS, *NETWORK_FIELDS)
    checks = {"base_features": _number(low=1, kind=int), "max_features": _number(low=1, kind=int),
              "n_conv_encoder": _blocks, "n_conv_decoder": _blocks, "region_head": _text}
    for key, value in kwargs.items():
        if key not in allowed:
            raise fail(where, f"unknown key 'network.kwargs.{key}'", f"remove it, or use one of {', '.join(allowed)}")
        if checks[key](value) is INVALID:
            example = '"softmax"' if key == "region_head" else "256" if "features" in key else "2"
            raise fail(where, f"network.kwargs.{key} = {json.dumps(value)} is not valid", f'e.g. "{key}": {example}')
    if kwargs.get("base_features", 1) > kwargs.get("max_features", math.inf):
        raise fail(where, "network.kwargs: base_features is above max_features", "e.g. base_features 32, max_features 256")
    return NetworkChoice(arch, kwargs)


def _loss(data: Any, where: str | Path) -> LossChoice:
    r = _Reader(data, where, "loss.", ("name", "dice", "weights", "focal_gamma", "patterns", "patterns_dice"))
    name = r.choice("name", "dice_ce", LOSSES)
    if "focal_gamma" in r.data and name != "dice_focal":
        raise r.bad("loss.focal_gamma", f"applies to dice_focal, not {name}", "remove it, or set \"name\": \"dice_focal\"")
    return LossChoice(name, r.choice("dice", "log", DICE_FORMS),
                      r.get("weights", {}, _name_weights, '"weights": {"enhancing tumour": 2.0}'),
                      r.get("focal_gamma", 2.0, _number(low=0.0), '"focal_gamma": 2.0'),
                      r.get("patterns", True, _bool, '"patterns": true'),
                      r.choice("patterns_dice", "log", DICE_FORMS))


def _optimiser(data: Any, where: str | Path) -> OptimiserChoice:
    r = _Reader(data, where, "optimiser.", ("name", "lr", "weight_decay", "momentum", "nesterov", "betas"))
    name = r.choice("name", "sgd", OPTIMISERS)
    for key in ("betas",) if name == "sgd" else ("momentum", "nesterov"):
        if key in r.data:
            raise r.bad(f"optimiser.{key}", f"does not apply to {name}", "remove it (sgd: momentum, nesterov; adamw: betas)")
    d = OptimiserChoice()
    betas = r.get("betas", d.betas, lambda v: tuple(v) if isinstance(v, list) and len(v) == 2 and
                  all(_number(low=0.0, high=0.999999)(x) is not INVALID for x in v) else INVALID, '"betas": [0.9, 0.999]')
    return OptimiserChoice(name, r.get("lr", d.lr, _number(above=0.0), '"lr": 0.01'),
                           r.get("weight_decay", d.weight_decay, _number(low=0.0), '"weight_decay": 3e-5'),
                           r.get("momentum", d.momentum, _number(low=0.0, high=0.999999), '"momentum": 0.99'),
                           r.get("nesterov", d.nesterov, _bool, '"nesterov": true'), tuple(float(b) for b in betas))


def _schedule(data: Any, where: str | Path) -> ScheduleChoice:
    r = _Reader(data, where, "schedule.", ("name", "exponent", "warmup", "min_lr"))
    name = r.choice("name", "poly", SCHEDULES)
    for key in ("warmup", "min_lr") if name == "poly" else ("exponent",):
        if key in r.data:
            raise r.bad(f"schedule.{key}", f"does not apply to {name}", "remove it (poly: exponent; warmup_cosine: "
                        "warmup, min_lr)")
    d = ScheduleChoice()
    return ScheduleChoice(name, r.get("exponent", d.exponent, _number(above=0.0), '"exponent": 0.9'),
                          r.get("warmup", d.warmup, _number(low=0.0, high=0.99), '"warmup": 0.05'),
                          r.get("min_lr", d.min_lr, _number(low=0.0), '"min_lr": 0.0'))


def _foreground(data: Any, where: str | Path) -> ForegroundChoice:
    r = _Reader(data, where, "foreground.", ("share", "mode"))
    share = r.get("share", None, lambda v: v if v is None else _number(low=0.0, high=1.0)(v), '"share": 0.33')
    return ForegroundChoice(share, r.choice("mode", "batch", FOREGROUND_MODES))


def parse_recipe(data: Any, where: str | Path, default_name: str | None = None) -> Recipe:
    """A :class:`Recipe` from a JSON object; a missing ``name`` takes ``default_name`` (a file's stem)."""
    keys = [f.name for f in fields(Recipe) if f.name != "source"]
    r = _Reader(data, where, "", keys)
    name = r.get("name", default_name, lambda v: v if isinstance(v, str) and NAME_RE.match(v) and len(v) <= 64
                 else INVALID, '"name": "my-recipe" (lower-case letters, digits, - and _, no "__")')
    if name is None:
        raise fail(where, "the recipe has no name", 'add e.g. "name": "my-recipe"')
    ds = r.data.get("deep_supervision", "halving")
    if isinstance(ds, str):
        ds = r.choice("deep_supervision", "halving", DEEP_SUPERVISION)
    else:
        ds = r.get("deep_supervision", "halving", _weights_list,
                   '"deep_supervision": [1, 0.5, 0.25] (full resolution first, its weight above 0), "halving" or "off"')
    d = Recipe()
    return Recipe(name=name,
                  description=r.get("description", "", _text, '"description": "what it is for"'),
                  network=_network(r.data.get("network", {}), where),
                  loss=_loss(r.data.get("loss", {}), where),
                  optimiser=_optimiser(r.data.get("optimiser", {}), where),
                  schedule=_schedule(r.data.get("schedule", {}), where),
                  deep_supervision=ds,
                  foreground=_foreground(r.data.get("foreground", {}), where),
                  accumulation=r.get("accumulation", d.accumulation, _number(low=1, kind=int), '"accumulation": 2'),
                  epochs=r.get("epochs", d.epochs, _number(low=1, kind=int), '"epochs": 1000'),
                  iters_per_epoch=r.get("iters_per_epoch", d.iters_per_epoch, _number(low=1, kind=int),
                                        '"iters_per_epoch": 250'),
                  source=str(where))


# ---- finding recipes ------------------------------------------------------------------------------------
def shipped_recipes(folder: Path = RECIPES_DIR) -> list[str]:
    """Names of the recipes in ``folder`` (the shipped ones by default; the default recipe first)."""
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    return sorted(set(names) | {DEFAULT_RECIPE}, key=lambda n: (n != DEFAULT_RECIPE, n))


def read_recipe_file(path: str | Path) -> Recipe:
    """Parse one recipe file; a file that is not JSON, or a non-default recipe called ``nnunet``, is refused."""
    path = Path(path)
    if not path.is_file():
        raise fail(path, "recipe file not found", "check the path, or give a shipped recipe's name "
                   f"({', '.join(shipped_recipes())})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(path, f"not a readable JSON recipe ({str(e).splitlines()[0][:80]})",
                   "fix the JSON syntax (docs/recipes.md shows the format)") from None
    recipe = parse_recipe(data, path, path.stem)
    if recipe.is_default and recipe.differences(Recipe()):
        key = recipe.differences(Recipe())[0][0]
        raise fail(path, f"is named {DEFAULT_RECIPE!r} but differs from the default recipe ({key})",
                   "give it another name: its folds would share the default recipe's folder")
    return recipe


def load_recipe(spec: str | Path | None, folder: Path = RECIPES_DIR) -> Recipe:
    """A recipe from a name (``folder/NAME.json``, a shipped one by default), a ``FILE.json``, or None (the default
    recipe)."""
    if spec is None or str(spec) == DEFAULT_RECIPE and not (folder / f"{DEFAULT_RECIPE}.json").is_file():
        return Recipe()
    text = str(spec)
    if text.endswith(".json") or "/" in text or "\\" in text:
        return read_recipe_file(text)
    path = folder / f"{text}.json"
    if not path.is_file():
        raise fail(None, f"--recipe {text}: no such recipe in {folder}",
                   f"use one of {', '.join(shipped_recipes(folder))} (autoseg-train --list-recipes) or a FILE.json")
    return read_recipe_file(path)


def recipe_name(spec: str | Path | None) -> str:
    """The name a ``--recipe`` argument stands for (a file's ``name``), for finding its trained folds."""
    if spec is None:
        return DEFAULT_RECIPE
    text = str(spec)
    if text.endswith(".json") or "/" in text or "\\" in text:
        return read_recipe_file(text).name
    if not NAME_RE.match(text):
        raise fail(None, f"--recipe {text!r} is not a recipe name", "use the name it was trained with, e.g. --recipe nnunet")
    return text


def recipe_of_checkpoint(ckpt: Mapping[str, Any], where: str | Path) -> Recipe:
    """The recipe a checkpoint was trained with. Checkpoints from before recipes existed were trained with the
    default recipe, with the options they stored (``dice`` absent: 1 - Dice, which they trained). Checkpoints from
    before ``loss.patterns`` existed trained without the patterns' term."""
    if "recipe" in ckpt:
        stored = dict(ckpt["recipe"])
        loss = stored.get("loss", {})
        stored["loss"] = {"patterns": False, "patterns_dice": loss.get("dice", "log"), **loss}
        return parse_recipe(stored, where)
    o = ckpt.get("options", {})
    d = Recipe()
    return replace(d, loss=replace(d.loss, dice=o.get("dice", "linear"), patterns=False),
                   optimiser=replace(d.optimiser, lr=o.get("lr", d.optimiser.lr),
                                     weight_decay=o.get("weight_decay", d.optimiser.weight_decay),
                                     momentum=o.get("momentum", d.optimiser.momentum),
                                     nesterov=o.get("nesterov", d.optimiser.nesterov)),
                   schedule=replace(d.schedule, exponent=o.get("poly_exponent", d.schedule.exponent)),
                   foreground=replace(d.foreground, share=o.get("oversample")),
                   epochs=o.get("epochs", d.epochs), iters_per_epoch=o.get("iters_per_epoch", d.iters_per_epoch),
                   source=str(where))


def recipe_lines(folder: Path = RECIPES_DIR) -> list[str]:
    """One line per shipped recipe: name and description."""
    recipes = [load_recipe(n, folder) for n in shipped_recipes(folder)]
    width = max(len(r.name) for r in recipes)
    return [f"{r.name:<{width}}  {r.description}" + ("  (default)" if r.is_default else "") for r in recipes]


# ---- what a recipe makes of a plan ----------------------------------------------------------------------
def _per_stage(value: int | Sequence[int], n: int) -> list[int]:
    """One number per stage: a number for every stage, or a list whose last value repeats."""
    values = [value] if isinstance(value, int) else list(value)
    return [int(values[min(i, len(values) - 1)]) for i in range(n)]


def network_plan(plan: NetworkPlan, choice: NetworkChoice,
                 adapt: Callable[[NetworkPlan, str], NetworkPlan] | None = None) -> NetworkPlan:
    """The plan's network with the recipe's architecture and overrides. ``adapt(plan, arch)`` gives an arch's
    plan on another plan's topology (the network registry's ``adapt_network_plan``: e.g. its own block counts,
    fewer stages); without it the arch is only renamed. The overrides apply to the adapted plan."""
    kw = dict(choice.kwargs)
    if choice.arch is not None and choice.arch != plan.arch:
        plan = adapt(plan, choice.arch) if adapt is not None else replace(plan, arch=choice.arch)
    n = plan.n_stages
    changes: dict[str, Any] = {}
    if "base_features" in kw or "max_features" in kw:
        base = int(kw.get("base_features", plan.features[0]))
        top = int(kw.get("max_features", max(plan.features)))
        changes["features"] = [min(base * 2 ** i, top) for i in range(n)]
    if "n_conv_encoder" in kw:
        changes["n_conv_encoder"] = _per_stage(kw["n_conv_encoder"], n)
    if "n_conv_decoder" in kw:
        changes["n_conv_decoder"] = _per_stage(kw["n_conv_decoder"], n - 1)
    if "region_head" in kw:
        changes["region_head"] = kw["region_head"]
    return replace(plan, **changes)
