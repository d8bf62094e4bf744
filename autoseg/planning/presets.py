"""Planner presets, one per VRAM class: which architecture and batch policy a GPU of that size gets.

The memory *budget* always comes from the real VRAM (``planner.memory_budget_bytes``); a preset only
chooses the architecture family and the dataset-coverage cap on the batch. The classes follow
nnU-Net v2: the plain U-Net up to 12 GB (its default, ~7.7 GB measured for the BraTS plan), the
residual-encoder U-Net (ResEnc L/XL style, blocks 1-3-4-6-6-6) from 24 GB. ``plans/presets/*.json``
are reviewable copies of these, kept equal by ``python -m autoseg.planning.reference --update`` and
checked by the tests; this module is the one the planner reads, so a non-editable install works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autoseg.network.unet import RESENC_BLOCKS, UNET_BLOCKS


@dataclass(frozen=True)
class VramPreset:
    """Planning choices for GPUs with at least ``vram_gb`` GB."""

    name: str
    vram_gb: float
    arch: str
    encoder_blocks: list[int]        # per stage, the last value repeats for deeper networks
    decoder_convs: int               # conv blocks per decoder stage
    max_dataset_covered: float       # one batch may cover at most this fraction of the dataset's voxels
    reference_batch_size: int        # the batch a 3d plan of this class is sized for (the minimum)
    note: str

    def blocks(self, n_stages: int) -> list[int]:
        """Encoder blocks for a network with ``n_stages`` stages."""
        b = self.encoder_blocks
        return [b[min(i, len(b) - 1)] for i in range(n_stages)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PLAIN = dict(arch="unet", encoder_blocks=UNET_BLOCKS[0], decoder_convs=UNET_BLOCKS[1], max_dataset_covered=0.05,
              reference_batch_size=2)
_RESENC = dict(arch="resenc_unet", encoder_blocks=RESENC_BLOCKS[0], decoder_convs=RESENC_BLOCKS[1],
               max_dataset_covered=1.0, reference_batch_size=2)

PRESETS: tuple[VramPreset, ...] = (
    VramPreset("8gb", 8, **_PLAIN, note="nnU-Net's default target: plain U-Net, 2 convs per stage"),
    VramPreset("12gb", 12, **_PLAIN, note="plain U-Net; the extra memory goes into a larger patch or batch"),
    VramPreset("24gb", 24, **_RESENC, note="residual encoder as nnU-Net ResEnc L (24 GB); no 5 % batch cap"),
    VramPreset("40gb", 40, **_RESENC, note="residual encoder as nnU-Net ResEnc XL (40 GB); no 5 % batch cap"),
    VramPreset("80gb", 80, **_RESENC, note="residual encoder; the budget allows the whole median image"),
)


NOMINAL_TOLERANCE = 0.9   # a "24 GB" card reports 23.6 GiB, an "80 GB" one 79.2: both still belong to their class


def select_preset(vram_gb: float) -> VramPreset:
    """The largest preset class not above ``vram_gb`` (within the tolerance for what cards report against
    their nominal size); the smallest class for less than 8 GB."""
    fitting = [p for p in PRESETS if p.vram_gb * NOMINAL_TOLERANCE <= vram_gb]
    return fitting[-1] if fitting else PRESETS[0]


def preset_by_arch(vram_gb: float, arch: str) -> VramPreset:
    """The preset for ``vram_gb``, or, when ``arch`` overrides its family, the nearest preset of that arch."""
    chosen = select_preset(vram_gb)
    if chosen.arch == arch:
        return chosen
    same = [p for p in PRESETS if p.arch == arch]
    return min(same, key=lambda p: abs(p.vram_gb - vram_gb))
