"""Train nnU-Net v2 for one epoch (250 iterations) on CPU, run with benchmarks/.venv-nnunet's python.

    python nnunet_1epoch.py DATASET_ID CONFIGURATION FOLD

``nnUNetv2_train -tr nnUNetTrainer_1epoch`` cannot be used on a CPU-only install: the trainer lookup
imports every trainer module, one of which imports torchvision, whose PyPI wheel is a CUDA build
(reference facts, section 1). So the top-level nnUNetTrainer is used with ``num_epochs = 1``, which
is all nnUNetTrainer_1epoch changes; its folder and checkpoint are then those of ``nnUNetTrainer``.
The final sliding-window validation of the training cases (fold ``all``) is skipped: the benchmark
scores a held-out case instead.
"""

import os
import sys

import torch
from nnunetv2.run import run_training as rt
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

_init = nnUNetTrainer.__init__


def _one_epoch_init(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                    device: torch.device = torch.device("cuda")):
    # same parameter names as nnUNetTrainer.__init__, which records them by name (my_init_kwargs)
    _init(self, plans, configuration, fold, dataset_json, device)
    self.num_epochs = 1


def main() -> None:
    dataset, configuration, fold = sys.argv[1:4]
    nnUNetTrainer.__init__ = _one_epoch_init
    nnUNetTrainer.perform_actual_validation = lambda self, *a, **k: None
    torch.set_num_threads(os.cpu_count())  # as nnUNetv2_train -device cpu does
    rt.run_training(dataset, configuration, fold, "nnUNetTrainer", device=torch.device("cpu"))


if __name__ == "__main__":
    main()
