"""What ``autoseg-predict --uncertainty`` costs: process CPU time and peak RSS of one full-size case, flag off and on.

Case: a synthetic 240x240x155 volume (4 channels) whose nonzero "brain" crops to 141x178x140, as a real
BraTS case does, so 8 windows of 128^3. Network: a small untrained 3-stage U-Net (4..16 features), so the
accumulators, not the network's activations, set the memory. Each (flag, folds) setting runs in its own
process, one torch thread, fp32, mirroring on (8 mirrorings per fold), so its peak RSS is its own; CPU time
is reported beside wall time because the machine may be shared.

    python benchmarks/uncertainty_cost.py                 # off/on x 1/2 folds
    python benchmarks/uncertainty_cost.py --one on 2      # one setting, in this process
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from autoseg.brats import dataset_json_for
from autoseg.dataset import DatasetInfo
from autoseg.inference.predictor import Predictor
from autoseg.io import Geometry
from autoseg.network import network_for_dataset
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan

SHAPE = (155, 240, 240)


def measure(mode: str, folds: int) -> str:
    torch.set_num_threads(1)
    info = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "Synthetic"))
    net = NetworkPlan("unet", [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [1, 1, 1], [1, 1])
    config = ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], median_shape=list(SHAPE), patch_size=[128, 128, 128],
                               batch_size=2, network=net, normalization=[ChannelNormalization("zscore", True)] * 4,
                               memory_estimate_gb=0.1)
    networks = []
    for seed in range(folds):
        torch.manual_seed(seed)
        networks.append(network_for_dataset(config.network, info, deep_supervision=False).eval())
    predictor = Predictor(config, info, networks)
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    brain = ((z - 77) / 70) ** 2 + ((y - 120) / 89) ** 2 + ((x - 120) / 70.5) ** 2 <= 1
    rng = np.random.default_rng(0)
    images = [np.where(brain, rng.normal(100, 20, SHAPE), 0).astype(np.float32) for _ in range(4)]
    geometry = Geometry((SHAPE[2], SHAPE[1], SHAPE[0]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "off":
        predictor.predict(images, geometry)
    else:
        predictor.predict_with_variance(images, geometry)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"{mode:>3}  folds {folds}  members {predictor.num_members:>2}  wall {wall:7.1f} s  CPU {cpu:6.1f} s  "
            f"peak RSS {peak:5.0f} MB (before predicting {before:.0f} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", nargs=2, metavar=("off|on", "FOLDS"), help="run one setting in this process")
    args = p.parse_args()
    if args.one:
        print(measure(args.one[0], int(args.one[1])), flush=True)
        return
    for mode in ("off", "on"):
        for folds in (1, 2):
            subprocess.run([sys.executable, __file__, "--one", mode, str(folds)], check=True)


if __name__ == "__main__":
    main()
