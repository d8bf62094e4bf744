"""The cascade: a full-resolution stage that also sees the segmentation of a coarser stage (nnU-Net's
``3d_cascade_fullres``, fed by ``3d_lowres``).

The previous stage's segmentation is a label map in the dataset's values, brought to the grid of the
cascade's preprocessed data; it enters the network as one-hot channels appended after the image channels,
one per foreground label value of dataset.json (:func:`prior_labels`). That holds for region-based datasets
too, as in nnU-Net: for BraTS the channels are labels 1, 2 and 4 of the map painted from the regions, not the
nested regions WT/TC/ET (which are unions of them, so nothing is lost).

Training perturbs the one-hot channels as nnU-Net does, so the cascade learns to correct the previous
stage rather than copy it (:func:`perturb_prior`): a random binary morphological operator per channel, and
the removal of a random small connected component. The image's intensity augmentation never touches them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoseg.context import input_channels
from autoseg.dataset import DatasetInfo
from autoseg.plans import NetworkPlan

PREVIOUS_STAGE = "3d_lowres"
CASCADE = "3d_cascade_fullres"
DATA_OF = "3d_fullres"          # the cascade reads this configuration's preprocessed cases (same spacing)
P_BINARY_OPERATOR = 0.4         # nnU-Net: per sample, then every channel, in random order
OPERATOR_RADIUS = (1, 8)        # iterations of a 6-connected step (a diamond of this radius)
P_REMOVE_COMPONENT = 0.2        # nnU-Net: per sample, then every channel
MAX_REMOVED_SHARE = 0.15        # only components covering less than this of the patch are removed


def prior_labels(info: DatasetInfo) -> tuple[int, ...]:
    """The label values that get a one-hot channel: every declared value but background."""
    return tuple(v for v in info.label_values if v != 0)


def network_in_channels(num_channels: int, net: NetworkPlan) -> int:
    """Input channels of a network: the image channels (with their 2.5D neighbours) plus the prior's one-hot."""
    return input_channels(num_channels, net.context_slices) + net.prior_channels


def one_hot(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """(len(labels), *seg.shape) float32: 1 where ``seg`` holds that label."""
    seg = np.asarray(seg)
    return np.stack([seg == v for v in labels]).astype(np.float32) if labels else np.zeros((0, *seg.shape), np.float32)


def with_prior(data: np.ndarray, prior: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """The network input of a cascade case: image channels (C, ...) then the one-hot of the prior label map."""
    if tuple(prior.shape) != tuple(data.shape[1:]):
        raise ValueError(f"previous-stage segmentation {tuple(prior.shape)} is not in the grid {tuple(data.shape[1:])}")
    return np.concatenate([np.asarray(data, dtype=np.float32), one_hot(prior, labels)])


def perturb_prior(prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """nnU-Net's perturbation of the one-hot prior (L, *patch), simplified: with p 0.4, every channel in random
    order gets a random dilation, erosion, opening or closing (radius 1..8 steps of the 6-connected structure,
    a diamond where nnU-Net uses a ball), and voxels a channel gains leave the others; with p 0.2, every channel
    loses one random connected component smaller than 15 % of the patch (it becomes background)."""
    from scipy import ndimage

    prior = np.array(prior, dtype=np.float32)
    if not len(prior):
        return prior
    structure = ndimage.generate_binary_structure(prior.ndim - 1, 1)
    operators = (ndimage.binary_dilation, ndimage.binary_erosion, ndimage.binary_opening, ndimage.binary_closing)
    if rng.random() < P_BINARY_OPERATOR:
        for c in rng.permutation(len(prior)):
            op = operators[int(rng.integers(len(operators)))]
            radius = int(rng.integers(OPERATOR_RADIUS[0], OPERATOR_RADIUS[1] + 1))
            mask = prior[c] > 0
            changed = op(mask, structure, iterations=radius) if mask.any() else mask
            gained = changed & ~mask
            prior[:, gained] = 0
            prior[c] = changed
    if rng.random() < P_REMOVE_COMPONENT:
        limit = MAX_REMOVED_SHARE * prior[0].size
        for c in rng.permutation(len(prior)):
            components, n = ndimage.label(prior[c] > 0)
            if not n:
                continue
            sizes = np.bincount(components.ravel())[1:]
            small = np.flatnonzero(sizes < limit) + 1
            if len(small):
                prior[c][components == small[int(rng.integers(len(small)))]] = 0
    return prior
