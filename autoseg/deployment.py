"""One fold's network as ONNX, for runtimes without PyTorch (onnxruntime, TensorRT, OpenVINO).

What is exported is the network only, for one window of the plan's patch size (the batch size is free):
``image`` (N, channels, *patch) float32, normalised as the plan says, to ``logits`` (N, outputs, *patch).
Everything around it stays in Python (autoseg-predict): reading and resampling the case, normalisation,
the sliding window with Gaussian weighting, mirroring, fold averaging and writing labels back. For a
region-based dataset the outputs are region logits (sigmoid gives each region's probability; the nested
softmax head is exported as those region logits); otherwise class logits (softmax over the labels). A
JSON file beside the model (``MODEL.onnx.json``) says all of that for the runtime's side.

At export time the ONNX model is run with onnxruntime (when installed) on one window and compared with
PyTorch; a difference over :data:`TOLERANCE` refuses the export.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg import __version__
from autoseg.checkpoint import load_checkpoint
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.io import atomic_path, write_json_atomic

FORMATS = ("zip", "onnx")
OPSET = 17
TOLERANCE = 1e-3   # largest |logit difference| between onnxruntime and torch on the check window
EXTRA_HINT = "pip install 'autoseg[onnx]' (or pip install onnx onnxruntime)"


@dataclass(frozen=True)
class OnnxExport:
    """Where the model and its description went, and the check's largest difference (None: not checked)."""

    path: Path
    description: Path
    max_difference: float | None
    window: tuple[int, ...]


def description_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def export_onnx(checkpoint: str | Path, out: str | Path, dataset: str | None = None, fold: int | str | None = None,
                check: bool = True) -> OnnxExport:
    """Export the network of ``checkpoint`` (a checkpoint written by autoseg-train or autoseg-export) to ``out``."""
    from autoseg.inference.predictor import configuration_from_dict
    from autoseg.network import network_for_dataset

    out = Path(out)
    if importlib.util.find_spec("onnx") is None:
        raise fail(None, "--format onnx needs the onnx package, which is not installed", EXTRA_HINT)
    ckpt = load_checkpoint(checkpoint, dataset=dataset, fold=fold)
    config = configuration_from_dict(ckpt["configuration"])
    info = DatasetInfo.from_dict(ckpt["dataset"], checkpoint)
    net = network_for_dataset(config.network, info, deep_supervision=False)
    net.load_state_dict(ckpt["network_state"])
    net.eval()
    window = torch.randn(1, info.num_channels, *config.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(window).float().numpy()
    with atomic_path(out, suffix=".onnx") as tmp:
        with warnings.catch_warnings():   # the TorchScript-based exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (window,), str(tmp), dynamo=False, input_names=["image"], output_names=["logits"],
                              opset_version=OPSET, dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        difference = onnxruntime_difference(tmp, window.numpy(), expected) if check else None
        if difference is not None and not difference <= TOLERANCE:
            raise fail(out, f"onnxruntime and torch disagree on a window (largest logit difference {difference:.2e}, "
                       f"more than {TOLERANCE:g}); nothing was written", "use the PyTorch checkpoint with autoseg-predict")
    description = description_path(out)
    write_json_atomic(description, describe(ckpt, info, config, difference, tuple(window.shape)))
    return OnnxExport(out, description, difference, tuple(window.shape))


def onnxruntime_difference(path: Path, window: np.ndarray, expected: np.ndarray) -> float | None:
    """Largest |difference| between onnxruntime's and torch's outputs on ``window``; None without onnxruntime."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": window})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def describe(ckpt: dict[str, Any], info: DatasetInfo, config: Any, difference: float | None,
             window: tuple[int, ...]) -> dict[str, Any]:
    """What a runtime needs to feed the network and read its outputs (``MODEL.onnx.json``)."""
    if info.region_based:
        meaning = ("region logits, one per region in 'outputs' order: sigmoid gives each region's probability; "
                   "labels are painted in regions_class_order")
    else:
        meaning = "class logits, one per label value in 'outputs' order: softmax gives the probabilities"
    return {
        "format": "autoseg-onnx-1", "autoseg_version": __version__, "opset": OPSET,
        "dataset": ckpt.get("dataset_folder"), "fold": ckpt.get("fold"), "epoch": ckpt.get("epoch"),
        "configuration": config.name,
        "input": {"name": "image", "shape": ["batch", *window[1:]], "dtype": "float32",
                  "channels": info.channel_names, "spacing_zyx_mm": list(config.spacing),
                  "normalization": [asdict(n) for n in config.normalization]},
        "output": {"name": "logits", "shape": ["batch", info.num_outputs, *window[2:]], "meaning": meaning,
                   "outputs": info.foreground_names if info.region_based else list(info.labels)},
        "labels": info.labels, "regions_class_order": info.regions_class_order,
        "sliding_window": {"patch_size": list(config.patch_size), "step": 0.5, "gaussian_weighting": True,
                           "mirror_axes": list(config.mirror_axes)},
        "check": {"onnxruntime_max_abs_difference": difference, "tolerance": TOLERANCE},
    }
