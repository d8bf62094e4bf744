"""The plan: typed, frozen dataclasses saved as ``plans.json``, the only contract between plan,
preprocess, train and predict.

Axis order everywhere in a plan is the array order (z, y, x) of the reoriented, preprocessed data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoseg.errors import fail
from autoseg.io import read_json, write_json_atomic
from autoseg.paths import DatasetPaths

PLANS_VERSION = 1
REGION_HEADS = ("softmax", "sigmoid")
LEGACY_REGION_HEAD = "sigmoid"  # what a plan without ``region_head`` trained


@dataclass(frozen=True)
class NetworkPlan:
    """U-Net topology. ``arch`` is ``"unet"`` (plain conv blocks) or ``"resenc_unet"`` (residual encoder).

    Stage i has ``features[i]`` channels, convolutions with ``kernel_sizes[i]`` and is entered with
    ``strides[i]`` (stage 0 has stride 1). The decoder mirrors the encoder with transposed convs.
    ``region_head`` (region-based datasets only): ``"softmax"`` over the label patterns, read out as
    nested region logits (:mod:`autoseg.network.regions`), or ``"sigmoid"``, one independent sigmoid per
    region as nnU-Net; plans written before the field existed are ``"sigmoid"``. ``context_slices`` K (2d
    only, ``autoseg-plan --context-slices``): the K slices on each side of the segmented one are extra input
    channels, (2K + 1) per image channel (2.5D, :mod:`autoseg.context`); plans.json omits it when 0.
    ``prior_channels`` (cascade only): one-hot channels of the previous stage's segmentation appended after the
    image channels (:mod:`autoseg.cascade`); plans.json omits it when 0.
    """

    arch: str
    features: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_encoder: list[int]
    n_conv_decoder: list[int]
    region_head: str = "softmax"
    context_slices: int = 0
    prior_channels: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkPlan:
        """From plans.json or a checkpoint; a plan without ``region_head`` predates it: ``"sigmoid"``."""
        return cls(**{"region_head": LEGACY_REGION_HEAD, **d})

    @property
    def n_stages(self) -> int:
        return len(self.features)

    @property
    def ndim(self) -> int:
        return len(self.kernel_sizes[0])


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalised. ``scheme``: ``zscore`` (per case; inside the nonzero mask
    when ``use_mask``), ``ct`` (clip to fingerprint percentiles, then global z-score), ``ct_window`` (clip to
    the fixed window [lower, upper] of ``autoseg-plan --ct-window``, then scale to [0, 1]), ``none``."""

    scheme: str
    use_mask: bool = False
    mean: float | None = None
    std: float | None = None
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class ConfigurationPlan:
    """One configuration (``2d``, ``3d_fullres``, ``3d_lowres``, ``3d_cascade_fullres``).

    A cascade stage names its ``previous_stage`` (``3d_lowres``), whose segmentation it receives as extra input
    channels, and ``data_of``, the configuration whose preprocessed cases it reads (``3d_fullres``: the same
    spacing, so no second copy); plans.json omits both when unset."""

    name: str
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    network: NetworkPlan
    normalization: list[ChannelNormalization]
    memory_estimate_gb: float
    batch_dice: bool = False
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    oversample_foreground: float = 0.33
    previous_stage: str | None = None
    data_of: str | None = None

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2


@dataclass(frozen=True)
class Plans:
    """Everything the planner decided for one dataset, plus the words that explain it."""

    dataset_name: str
    vram_gb: float
    vram_source: str
    orientation: str
    num_channels: int
    num_outputs: int
    region_based: bool
    configurations: dict[str, ConfigurationPlan]
    explanation: list[str] = field(default_factory=list)
    version: int = PLANS_VERSION

    @property
    def default_configuration(self) -> str:
        """What commands use without -c: ``3d_fullres``, or ``2d`` for a 2D dataset's plan (its only one)."""
        return "3d_fullres" if "3d_fullres" in self.configurations else next(iter(self.configurations))

    def configuration(self, name: str, where: str | Path | None = None) -> ConfigurationPlan:
        if name not in self.configurations:
            raise fail(where, f"configuration {name!r} is not in the plan (have: {', '.join(self.configurations)})",
                       "choose one of those with -c")
        return self.configurations[name]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for c in d["configurations"].values():   # a plan without 2.5D or cascade reads as before the fields existed
            for key in ("context_slices", "prior_channels"):
                if c["network"].get(key) == 0:
                    del c["network"][key]
            for key in ("previous_stage", "data_of"):
                if c.get(key) is None:
                    c.pop(key, None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path | None = None) -> Plans:
        try:
            if d.get("version") != PLANS_VERSION:
                raise fail(where, f"plans version {d.get('version')} is not {PLANS_VERSION}", "rerun autoseg-plan")
            configs = {}
            for name, c in d["configurations"].items():
                c = dict(c)
                c["network"] = NetworkPlan.from_dict(c["network"])
                c["normalization"] = [ChannelNormalization(**n) for n in c["normalization"]]
                configs[name] = ConfigurationPlan(**c)
            return cls(**{**d, "configurations": configs})
        except (KeyError, TypeError) as e:
            raise fail(where, f"plans file is incomplete or from another version ({e})", "rerun autoseg-plan") from None

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        if not path.is_file():
            raise fail(path, "no plan found", "run autoseg-plan first")
        return cls.from_dict(read_json(path), path)


def default_configuration(paths: DatasetPaths, recipe: str | None = None) -> str:
    """The configuration a command uses without -c: the plan's default (``3d_fullres``, or the only one planned,
    e.g. ``2d`` for a 2D dataset); without a plans.json (a results folder copied alone) the only one trained, else
    ``3d_fullres``."""
    if paths.plans_json.is_file():
        return Plans.load(paths.plans_json).default_configuration
    trained = paths.trained_configurations(recipe)
    return trained[0] if len(trained) == 1 else "3d_fullres"
