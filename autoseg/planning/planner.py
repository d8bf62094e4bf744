"""The planner: from a dataset fingerprint and a VRAM budget to :class:`~autoseg.plans.Plans`.

The method is nnU-Net v2's (``docs/planning-memory.md``): target spacing from the median spacing,
a patch that starts at the median (cropped, resampled) image and shrinks until the estimated training
memory of a batch of 2 fits the budget, pooling per axis until the feature map edge reaches 4, then
the largest batch that still fits (capped by dataset coverage). Unlike nnU-Net the budget is counted
in bytes by the network's memory estimate (:func:`autoseg.network.estimate_memory`: the analytic model of
the built-in U-Nets, a forward traced on the meta device for any other registered network), not in
feature-map elements.
Every decision is written as a sentence into ``Plans.explanation``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from autoseg.cascade import CASCADE, DATA_OF, PREVIOUS_STAGE, prior_labels
from autoseg.context import input_channels
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.fingerprint import Fingerprint
from autoseg.network import adapt_network_plan, estimate_memory, network_spec
from autoseg.network.memory import MemoryEstimate
from autoseg.planning.presets import PRESETS, VramPreset, preset_by_arch, select_preset
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans

GIB = 2 ** 30
USABLE_FRACTION = 0.7          # of the VRAM, for tensors; the rest: CUDA context, cuDNN workspaces, allocator slack
DEFAULT_VRAM_GB = 8.0          # nnU-Net's default target when no GPU is found and none is given
ANISO_THRESHOLD = 3            # an axis is anisotropic when its spacing is 3x coarser than the others
MIN_EDGE = 4                   # stop pooling an axis when its feature map edge would fall below this
INITIAL_PATCH_EDGE = {3: 256, 2: 2048}    # the initial patch has this volume (then clipped to the median shape)
LOWRES_THRESHOLD = 0.25        # plan 3d_lowres when the fullres patch covers less than this of the median image
MASK_THRESHOLD = 0.75          # z-score inside the nonzero mask when cropping keeps less than this of the image
MIXED_PRECISION = True         # plans are sized for mixed-precision training on a GPU
CANONICAL_ORIENTATION = "LPS"  # arrays are (z, y, x) after reorientation to ITK's identity direction
OUTLIER_FACTOR = 10            # a case this many times off the median spacing or shape on an axis is named


def memory_budget_bytes(vram_gb: float) -> int:
    """Bytes of tensors a training step may hold on a GPU with ``vram_gb`` GiB."""
    return int(vram_gb * GIB * USABLE_FRACTION)


def detect_vram() -> tuple[float | None, str]:
    """Total memory of CUDA device 0 in GiB and where it came from; (None, reason) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device found"
    props = torch.cuda.get_device_properties(0)
    return props.total_memory / GIB, f"detected on {props.name}"


@dataclass(frozen=True)
class Topology:
    """Pooling and kernels for one patch: ``strides[0]`` is all ones; ``patch_size`` is padded to ``divisor``."""

    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    patch_size: list[int]
    divisor: list[int]


def topology(patch_size: Sequence[int], spacing: Sequence[float], min_edge: int = MIN_EDGE) -> Topology:
    """Pool (stride 2) every axis whose feature map is at least ``2 * min_edge`` and whose spacing is within
    2x of the finest; a kernel axis becomes 3 once its spacing is within 2x of the finest (1 before)."""
    dim = len(spacing)
    cur_spacing, cur_size = list(map(float, spacing)), list(map(float, patch_size))
    kernel, pools = [1] * dim, [0] * dim
    strides, kernels = [[1] * dim], []
    while True:
        valid = [d for d in range(dim) if cur_size[d] >= 2 * min_edge]
        if not valid:
            break
        finest = min(cur_spacing[d] for d in valid)
        valid = [d for d in valid if cur_spacing[d] / finest < 2]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * min_edge:
            break
        finest_all = min(cur_spacing)
        kernel = [3 if kernel[d] == 3 or cur_spacing[d] / finest_all < 2 else 1 for d in range(dim)]
        kernels.append(list(kernel))
        step = [2 if d in valid else 1 for d in range(dim)]
        for d in valid:
            pools[d] += 1
            cur_spacing[d] *= 2
            cur_size[d] = math.ceil(cur_size[d] / 2)
        strides.append(step)
    kernels.append([3] * dim)
    divisor = [2 ** p for p in pools]
    padded = [int(math.ceil(s / q) * q) for s, q in zip(patch_size, divisor)]
    return Topology(strides, kernels, padded, divisor)


def network_for(topo: Topology, preset: VramPreset, base_features: int, max_features: int,
                arch: str | None = None) -> NetworkPlan:
    """The network of a preset's family on a topology, features doubling per stage up to ``max_features``;
    for another ``arch``, that network on the same topology (:func:`autoseg.network.adapt_network_plan`)."""
    n = len(topo.strides)
    net = NetworkPlan(arch=preset.arch, features=[min(base_features * 2 ** i, max_features) for i in range(n)],
                      kernel_sizes=topo.kernel_sizes, strides=topo.strides, n_conv_encoder=preset.blocks(n),
                      n_conv_decoder=[preset.decoder_convs] * (n - 1))
    return adapt_network_plan(net, arch or preset.arch, "--arch")


def target_spacing(spacings: np.ndarray, sizes: np.ndarray) -> tuple[list[float], str]:
    """Median spacing per axis; the 10th percentile for an axis much coarser (and shorter) than the others."""
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [d for d in range(len(target)) if d != worst]
    aniso = (target[worst] > ANISO_THRESHOLD * max(target[others])
             and size[worst] * ANISO_THRESHOLD < min(size[others]))
    spacing = [round(float(s), 6) for s in target]
    if not aniso:
        return spacing, f"Target spacing {fmt(spacing)} mm is the median spacing of the training cases."
    tenth = float(np.percentile(spacings[:, worst], 10))
    spacing[worst] = round(max(tenth, float(max(target[others]))), 6)
    return spacing, (f"Target spacing {fmt(spacing)} mm: the median, except axis {worst}, which is more than "
                     f"{ANISO_THRESHOLD}x coarser than the others, takes the 10th percentile of its spacings "
                     "so that fewer cases are interpolated across thick slices.")


def fmt(values: Sequence[float]) -> str:
    """``1 x 0.5 x 0.5`` for sentences."""
    return " x ".join(f"{v:g}" for v in values)


def _case_arrays(fp: Fingerprint) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacings of all cases, and the shapes with their spacings that the median image is taken from:
    the cropped shapes of the cases the fingerprint sampled, or every case's full shape if none was."""
    if not fp.cases:
        raise fail(None, f"fingerprint of {fp.dataset_name} lists no training case",
                   "rerun autoseg-plan on a dataset with cases")
    spacings = np.array([c.spacing for c in fp.cases], dtype=float)
    cropped = [c for c in fp.cases if c.shape_after_crop is not None]
    rows = cropped or fp.cases
    shapes = np.array([c.shape_after_crop or c.shape for c in rows], dtype=float)
    return spacings, np.array([c.spacing for c in rows], dtype=float), shapes


def outlier_cases(fp: Fingerprint, spacing: Sequence[float]) -> list[tuple[str, str]]:
    """(case id, what is unusual) for each case whose spacing or shape is more than ``OUTLIER_FACTOR`` times
    off the median of the training cases on some axis (needs 3 cases or more for a median to mean anything).

    Usually a header in the wrong unit (cm for mm) or an image of another kind. The plan follows the
    median, so it stays sound, but the case is still resampled to the target ``spacing``: its size there
    is given, since a case 100x too coarse grows a million-fold.
    """
    if len(fp.cases) < 3:
        return []
    spacings = np.array([c.spacing for c in fp.cases], dtype=float)
    shapes = np.array([c.shape for c in fp.cases], dtype=float)
    medians = {"spacing": np.median(spacings, axis=0), "shape": np.median(shapes, axis=0)}
    found = []
    for case, sp, sh in zip(fp.cases, spacings, shapes):
        words = []
        for what, values, unit in (("spacing", sp, " mm"), ("shape", sh, "")):
            ratio = values / medians[what]
            worst = float(max(ratio.max(), 1 / ratio.min()))
            if worst > OUTLIER_FACTOR:
                how = f"{ratio.max():.3g}x" if ratio.max() >= 1 / ratio.min() else f"1/{1 / ratio.min():.3g}"
                words.append(f"{what} {fmt(values)}{unit} is {how} the median {fmt(medians[what])}{unit}")
        if words:
            resampled = [max(1, round(n * s / t)) for n, s, t in zip(sh, sp, spacing)]
            found.append((case.case_id, f"{' and '.join(words)}; at the target spacing it is {fmt(resampled)} voxels"))
    return found


def median_shape(spacings: np.ndarray, shapes: np.ndarray, spacing: Sequence[float]) -> list[int]:
    """Median image shape after resampling to ``spacing``."""
    return [int(round(v)) for v in np.median(shapes * spacings / np.asarray(spacing), axis=0)]


@dataclass(frozen=True)
class _Fit:
    network: NetworkPlan
    patch_size: list[int]
    batch_size: int
    memory_bytes: int
    sentences: list[str]


def fit_patch_and_batch(median: Sequence[int], spacing: Sequence[float], budget: int, preset: VramPreset,
                        in_channels: int, out_channels: int, base_features: int, max_features: int,
                        dataset_voxels: float, arch: str | None = None) -> _Fit:
    """nnU-Net's patch/batch search with the network's byte-level memory estimate (see the module docstring).

    The estimate is taken once per patch, for one sample: every activation has the batch axis, so a batch
    of ``n`` holds the model state once and ``n`` times the rest."""
    dim = len(spacing)
    inv = 1 / np.asarray(spacing, dtype=float)
    start = inv * (INITIAL_PATCH_EDGE[dim] ** dim / np.prod(inv)) ** (1 / dim)
    patch = [int(min(round(a), m)) for a, m in zip(start, median)]
    min_batch = preset.reference_batch_size

    per_patch: dict[tuple[int, ...], MemoryEstimate] = {}

    def estimate(topo: Topology, batch: int) -> int:
        key = tuple(topo.patch_size)
        if key not in per_patch:
            net = network_for(topo, preset, base_features, max_features, arch)
            per_patch[key] = estimate_memory(net, topo.patch_size, 1, in_channels, out_channels, MIXED_PRECISION)
        return per_patch[key].for_batch(batch).total

    topo = topology(patch, spacing)
    first = topo.patch_size
    shrunk = 0
    while estimate(topo, min_batch) > budget:
        ratios = [p / m for p, m in zip(topo.patch_size, median)]
        reducible = [d for d in range(dim) if topo.patch_size[d] - topo.divisor[d] >= 2 * MIN_EDGE]
        if not reducible:
            need = estimate(topo, min_batch) / GIB
            raise fail(None, f"even a {fmt(topo.patch_size)} patch needs {need:.2f} GiB for a batch of {min_batch}, "
                             f"more than the budget of {budget / GIB:.2f} GiB",
                       "give more --vram, or fewer --base-features / --max-features")
        axis = max(reducible, key=lambda d: ratios[d])
        patch = list(topo.patch_size)
        patch[axis] -= topo.divisor[axis]
        topo = topology(patch, spacing)
        shrunk += 1
    net = network_for(topo, preset, base_features, max_features, arch)
    fits = min_batch
    while estimate(topo, fits + 1) <= budget and fits < 1024:
        fits += 1
    cap = max(min_batch, int(round(preset.max_dataset_covered * dataset_voxels / np.prod(topo.patch_size))))
    batch = min(fits, cap)
    memory = estimate(topo, batch)
    sentences = [
        f"Patch {fmt(topo.patch_size)} voxels: started from the median image {fmt(median)} "
        f"(padded to {fmt(first)} to divide by the pooling), "
        + (f"shrunk {shrunk} step(s) along the axis largest relative to the median until a batch of {min_batch} "
           "fitted the budget." if shrunk else f"and a batch of {min_batch} fits the budget at this size."),
        f"{net.n_stages} stages: each axis is pooled by 2 until its feature map edge would drop below {MIN_EDGE} "
        f"(pooling per axis {fmt(np.log2(topo.divisor).astype(int))}, "
        f"bottleneck {fmt(np.asarray(topo.patch_size) // topo.divisor)}); "
        f"features {'-'.join(map(str, net.features))}, {net.arch} with {'-'.join(map(str, net.n_conv_encoder))} "
        "encoder blocks.",
        f"Batch size {batch}: the memory model allows {fits} at this patch"
        + (f", capped at {cap} so one batch covers at most {preset.max_dataset_covered:.0%} of the dataset's voxels"
           if cap < fits else "") + f" (minimum {min_batch}).",
        f"Estimated training memory {memory / GIB:.2f} GiB (mixed precision) against a budget of "
        f"{budget / GIB:.2f} GiB.",
    ]
    return _Fit(net, topo.patch_size, batch, memory, sentences)


def check_options(ct_window: Sequence[float] | None = None, context_slices: int = 0) -> None:
    """Refuse an impossible ``--ct-window`` or ``--context-slices`` before any work is done."""
    if not (isinstance(context_slices, int) and context_slices >= 0):
        raise fail(None, f"--context-slices {context_slices} must be a whole number of at least 0",
                   "e.g. --context-slices 2 (two slices on each side)")
    if ct_window is not None and (len(ct_window) != 2 or not ct_window[1] > 0):
        raise fail(None, f"--ct-window {' '.join(f'{v:g}' for v in ct_window)} must be a centre and a positive width",
                   "e.g. --ct-window 40 80 for the brain window (HU)")


def window_channels(fp: Fingerprint, ct_window: Sequence[float]) -> list[int]:
    """The channels ``--ct-window`` applies to: those named CT, or the only channel. A window without the median
    of the labelled voxels would flatten what is to be segmented (e.g. 40/80 on PNGs storing HU + 1024): refused."""
    names = {int(k): v for k, v in fp.channel_names.items()}
    chosen = [c for c, n in names.items() if n.upper() == "CT"] or (list(names) if len(names) == 1 else [])
    if not chosen:
        raise fail(None, f"--ct-window: no channel is named CT (channels: {', '.join(names.values())})",
                   "name the CT channel \"CT\" in dataset.json's channel_names (autoseg-convert slices --channel-name CT)")
    lower, upper = ct_window[0] - ct_window[1] / 2, ct_window[0] + ct_window[1] / 2
    for c in chosen:
        stats = fp.intensity[c]
        if not lower <= stats.median <= upper:
            raise fail(None, f"--ct-window {ct_window[0]:g} {ct_window[1]:g} is [{lower:g}, {upper:g}], but the labelled "
                       f"voxels of channel {names[c]} have the median {stats.median:g} (0.5..99.5 percentile "
                       f"{stats.percentile_00_5:g}..{stats.percentile_99_5:g}): the window would flatten them",
                       "give the window in the images' own values: for 16-bit PNGs of HU + 1024 convert with "
                       "--intercept -1024 (or add 1024 to the centre); 8-bit PNGs are windowed already: no --ct-window")
    return chosen


def normalization(fp: Fingerprint, ct_window: Sequence[float] | None = None
                  ) -> tuple[list[ChannelNormalization], list[str]]:
    """Per channel: ``CT`` -> clip to the fingerprint's 0.5/99.5 percentiles + global z-score; ``noNorm`` ->
    none; anything else -> per-case z-score, inside the nonzero mask when cropping removes much. With
    ``ct_window`` (centre, width) the channels of :func:`window_channels` are clipped to that fixed window
    and scaled to [0, 1] instead: the same mapping on every scanner and dataset, as a radiologist's window."""
    rel = fp.median_relative_size_after_crop
    use_mask = rel < MASK_THRESHOLD
    out, words = [], []
    windowed = window_channels(fp, ct_window) if ct_window is not None else []
    for key in sorted(fp.channel_names, key=int):
        name, stats = fp.channel_names[key], fp.intensity[int(key)]
        if int(key) in windowed:
            assert ct_window is not None
            lower, upper = ct_window[0] - ct_window[1] / 2, ct_window[0] + ct_window[1] / 2
            out.append(ChannelNormalization("ct_window", False, lower=lower, upper=upper))
            words.append(f"{name}: fixed window {ct_window[0]:g}/{ct_window[1]:g} (--ct-window): clip to "
                         f"[{lower:g}, {upper:g}], then scale to [0, 1]")
        elif name.upper() == "CT":
            out.append(ChannelNormalization("ct", False, stats.mean, stats.std, stats.percentile_00_5,
                                            stats.percentile_99_5))
            words.append(f"{name}: clip to [{stats.percentile_00_5:g}, {stats.percentile_99_5:g}], "
                         f"then (x - {stats.mean:g}) / {stats.std:g}")
        elif name.lower() == "nonorm":
            out.append(ChannelNormalization("none"))
            words.append(f"{name}: none")
        else:
            out.append(ChannelNormalization("zscore", use_mask))
            words.append(f"{name}: z-score{' inside the nonzero mask' if use_mask else ''}")
    why = (f"cropping to the nonzero box keeps {rel:.0%} of the median image (< {MASK_THRESHOLD:.0%}), so z-score "
           "statistics come from the foreground mask" if use_mask else
           f"cropping keeps {rel:.0%} of the median image, so z-score uses the whole crop")
    return out, [f"Normalisation per channel: {'; '.join(words)} ({why})."]


def _configuration(name: str, spacing: list[float], median: list[int], fit: _Fit,
                   norm: list[ChannelNormalization], batch_dice: bool) -> ConfigurationPlan:
    return ConfigurationPlan(name=name, spacing=spacing, median_shape=median, patch_size=fit.patch_size,
                             batch_size=fit.batch_size, network=fit.network, normalization=norm,
                             memory_estimate_gb=round(fit.memory_bytes / GIB, 3), batch_dice=batch_dice,
                             mirror_axes=list(range(len(fit.patch_size))))


def _lowres_spacing(spacing: list[float]) -> list[float]:
    """One 3 % coarsening step: the finer axes first for anisotropic spacing, all axes once isotropic."""
    top = max(spacing)
    if any(s * 1.03 < top for s in spacing):
        return [min(s * 1.03, top) if s < top else s for s in spacing]
    return [s * 1.03 for s in spacing]


def check_request(vram_gb: float | None, arch: str | None, base_features: int, max_features: int,
                  spacing: Sequence[float] | None = None) -> None:
    """Refuse impossible planning options before any work is done."""
    if spacing is not None and (len(spacing) not in (1, 3) or min(spacing) <= 0):
        raise fail(None, f"--spacing {' '.join(map(str, spacing))} must be one or three positive numbers (mm)",
                   "e.g. --spacing 2 for 2 mm isotropic, or --spacing 3 1 1 (z y x)")
    if vram_gb is not None and vram_gb <= 0:
        raise fail(None, f"--vram {vram_gb} must be positive", "give the GPU memory in GB, e.g. --vram 8")
    if arch is not None:
        network_spec(arch, "--arch")
    if base_features < 1 or max_features < base_features:
        raise fail(None, f"features {base_features}..{max_features} are not increasing positive numbers",
                   "use e.g. --base-features 32 --max-features 320")


def plan_dataset(fingerprint: Fingerprint, info: DatasetInfo, vram_gb: float, vram_source: str,
                 arch: str | None = None, base_features: int = 32, max_features: int = 320,
                 spacing: Sequence[float] | None = None, ct_window: Sequence[float] | None = None,
                 context_slices: int = 0) -> Plans:
    """Plan 2d, 3d_fullres and (when needed) 3d_lowres for a dataset on a GPU with ``vram_gb`` GiB; only 2d for
    a dataset of 2D images (:attr:`DatasetInfo.is_2d`). ``ct_window`` (centre, width): see :func:`normalization`.
    ``context_slices`` K: the 2d network also sees K slices on each side (2.5D), sized for its (2K + 1) x
    channels of input like any 2d configuration.

    ``spacing`` (z, y, x mm, or one value for all axes) overrides the target spacing, e.g. a coarse
    spacing for quick CPU training; everything else is still derived from it.
    """
    check_request(vram_gb, arch, base_features, max_features, spacing)
    if len(fingerprint.intensity) != info.num_channels or len(fingerprint.channel_names) != info.num_channels:
        raise fail(None, f"fingerprint has {len(fingerprint.intensity)} channel(s), dataset.json {info.num_channels}",
                   "delete fingerprint.json and rerun autoseg-plan")
    preset = preset_by_arch(vram_gb, arch) if arch in {p.arch for p in PRESETS} else select_preset(vram_gb)
    budget = memory_budget_bytes(vram_gb)
    spacings, shape_spacings, shapes = _case_arrays(fingerprint)
    median_spacing, why_spacing = target_spacing(spacings, shapes)
    if spacing is None:
        spacing = median_spacing
    else:
        spacing = [float(v) for v in (list(spacing) * 3 if len(spacing) == 1 else spacing)]
        why_spacing = (f"Target spacing {fmt(spacing)} mm given with --spacing (the data alone would give "
                       f"{fmt(median_spacing)} mm).")
    median = median_shape(shape_spacings, shapes, spacing)
    dataset_voxels = float(np.prod(median)) * fingerprint.num_training
    cin, cout = info.num_channels, info.num_outputs
    check_options(ct_window, context_slices)
    if context_slices and info.is_2d:
        raise fail(None, f"--context-slices {context_slices}: the cases are 2D images, one slice each",
                   "leave --context-slices out for 2D images")
    norm, why_norm = normalization(fingerprint, ct_window)
    explanation = [
        f"Planned for {vram_gb:g} GB of GPU memory ({vram_source}); {USABLE_FRACTION:.0%} of it, "
        f"{budget / GIB:.2f} GiB, is the budget for tensors (the rest: CUDA context, cuDNN workspaces, allocator slack).",
        f"Preset {preset.name}: {preset.arch} ({preset.note})"
        + (f", chosen by --arch {arch}." if arch and arch != select_preset(vram_gb).arch else ".")
        if arch is None or arch == preset.arch else
        f"Network {arch}, chosen by --arch ({network_spec(arch).summary}), on the topology and batch policy of "
        f"preset {preset.name} ({preset.note}).",
        why_spacing,
        f"Median image after cropping and resampling: {fmt(median)} voxels over {fingerprint.num_training} "
        f"training case(s).",
        *why_norm,
    ]
    configs: dict[str, ConfigurationPlan] = {}
    max_2d = max_features * 8 // 5     # nnU-Net: 512 features in 2d where 3d has 320
    fit2d = fit_patch_and_batch(median[1:], spacing[1:], budget, preset, input_channels(cin, context_slices), cout,
                                base_features, max_2d, dataset_voxels, arch)
    if context_slices:
        fit2d = replace(fit2d, network=replace(fit2d.network, context_slices=context_slices))
        explanation.append(
            f"2d sees {context_slices} slice(s) on each side of the one it segments as extra input channels (2.5D, "
            f"--context-slices): {input_channels(cin, context_slices)} input channels, the edge slices repeated at "
            "the volume's ends; patch and batch below are sized for them.")
    configs["2d"] = _configuration("2d", spacing[1:], median[1:], fit2d, norm, batch_dice=True)
    explanation += ["2d (slices along axis 0): " + s for s in fit2d.sentences]
    if info.is_2d:   # one slice per case: a 3d network would only see that slice
        explanation.append("Only the 2d configuration: dataset.json marks the cases as 2D images (autoseg_2d).")
        return Plans(dataset_name=fingerprint.dataset_name, vram_gb=float(vram_gb), vram_source=vram_source,
                     orientation=CANONICAL_ORIENTATION, num_channels=cin, num_outputs=cout,
                     region_based=info.region_based, configurations=configs, explanation=explanation)
    fit3d = fit_patch_and_batch(median, spacing, budget, preset, cin, cout, base_features, max_features, dataset_voxels,
                                arch)
    coverage = float(np.prod(fit3d.patch_size) / np.prod(median))
    explanation += ["3d_fullres: " + s for s in fit3d.sentences]
    lowres = _plan_lowres(shape_spacings, shapes, spacing, median, coverage, budget, preset, cin, cout, base_features,
                          max_features, dataset_voxels, explanation, arch)
    configs["3d_fullres"] = _configuration("3d_fullres", spacing, median, fit3d, norm, batch_dice=lowres is not None)
    if lowres is not None:
        lspacing, lmedian, lfit = lowres
        configs["3d_lowres"] = _configuration("3d_lowres", lspacing, lmedian, lfit, norm, batch_dice=False)
        explanation += ["3d_lowres: " + s for s in lfit.sentences]
        configs[CASCADE] = cascade_configuration(configs["3d_fullres"], info)
        explanation.append(cascade_sentence(configs[CASCADE], info))
    return Plans(dataset_name=fingerprint.dataset_name, vram_gb=float(vram_gb), vram_source=vram_source,
                 orientation=CANONICAL_ORIENTATION, num_channels=cin, num_outputs=cout,
                 region_based=info.region_based, configurations=configs, explanation=explanation)


def cascade_configuration(fullres: ConfigurationPlan, info: DatasetInfo) -> ConfigurationPlan:
    """``3d_cascade_fullres``: 3d_fullres's spacing, patch, batch and network, reading 3d_fullres's preprocessed
    cases, with the one-hot of 3d_lowres's segmentation as extra input channels (:mod:`autoseg.cascade`). The
    memory estimate counts those channels; they change only the first convolution, so the patch is kept."""
    extra = len(prior_labels(info))
    network = replace(fullres.network, prior_channels=extra)
    memory = estimate_memory(network, fullres.patch_size, fullres.batch_size, info.num_channels + extra,
                             info.num_outputs, MIXED_PRECISION).total
    return replace(fullres, name=CASCADE, network=network, memory_estimate_gb=round(memory / GIB, 3),
                   previous_stage=PREVIOUS_STAGE, data_of=DATA_OF)


def cascade_sentence(cascade: ConfigurationPlan, info: DatasetInfo) -> str:
    """The explanation of the cascade configuration, in words."""
    labels = ", ".join(map(str, prior_labels(info)))
    return (f"{CASCADE}: 3d_fullres's spacing, patch {fmt(cascade.patch_size)}, batch {cascade.batch_size} and "
            f"network on 3d_fullres's preprocessed cases, plus {cascade.network.prior_channels} input channel(s), the "
            f"one-hot of {PREVIOUS_STAGE}'s segmentation (label values {labels}); each training case gets the "
            f"prediction of the {PREVIOUS_STAGE} fold that held it out (estimated memory "
            f"{cascade.memory_estimate_gb:.2f} GiB).")


def _plan_lowres(spacings: np.ndarray, shapes: np.ndarray, spacing: list[float], median: list[int], coverage: float,
                 budget: int, preset: VramPreset, cin: int, cout: int, base_features: int, max_features: int,
                 dataset_voxels: float, explanation: list[str],
                 arch: str | None = None) -> tuple[list[float], list[int], _Fit] | None:
    """3d_lowres when the fullres patch covers less than a quarter of the median image: coarsen the spacing
    by 3 % steps until the patch covers a quarter; dropped if the image is then not 2x smaller."""
    if coverage >= LOWRES_THRESHOLD:
        explanation.append(f"No 3d_lowres: the 3d_fullres patch covers {coverage:.0%} of the median image "
                           f"(>= {LOWRES_THRESHOLD:.0%}).")
        return None
    lspacing = list(spacing)
    while True:
        lspacing = _lowres_spacing(lspacing)
        lmedian = median_shape(spacings, shapes, lspacing)
        fit = fit_patch_and_batch(lmedian, lspacing, budget, preset, cin, cout, base_features, max_features,
                                  dataset_voxels, arch)
        if np.prod(fit.patch_size) / np.prod(lmedian) >= LOWRES_THRESHOLD:
            break
    if np.prod(median) / np.prod(lmedian) < 2:
        explanation.append(f"No 3d_lowres: the fullres patch covers only {coverage:.0%} of the median image, but at "
                           f"a spacing where it covers {LOWRES_THRESHOLD:.0%} the image is less than 2x smaller.")
        return None
    lspacing = [round(s, 6) for s in lspacing]
    explanation.append(f"3d_lowres at spacing {fmt(lspacing)} mm (median image {fmt(lmedian)}): the fullres patch "
                       f"covers only {coverage:.0%} of the median image, so a coarser stage sees more context "
                       "(its predictions can seed a cascade).")
    return lspacing, lmedian, fit
