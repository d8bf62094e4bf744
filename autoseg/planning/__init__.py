"""Planning: from a fingerprint and a VRAM budget to ``plans.json`` (spacing, patch, batch, network).

The plan dataclasses themselves live in :mod:`autoseg.plans`, below every stage that reads them; the memory
estimate a patch and batch are sized with is the network's (:func:`autoseg.network.estimate_memory`)."""

from autoseg.planning.planner import DEFAULT_VRAM_GB, detect_vram, memory_budget_bytes, plan_dataset, topology
from autoseg.planning.presets import PRESETS, VramPreset, select_preset

__all__ = ["DEFAULT_VRAM_GB", "PRESETS", "VramPreset", "detect_vram", "memory_budget_bytes", "plan_dataset",
           "select_preset", "topology"]
