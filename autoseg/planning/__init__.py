"""Planning: from a fingerprint and a VRAM budget to ``plans.json`` (spacing, patch, batch, network).

The plan dataclasses themselves live in :mod:`autoseg.plans`, below every stage that reads them."""

from autoseg.planning.memory import MemoryEstimate, estimate_training_memory, estimate_training_memory_bytes
from autoseg.planning.planner import DEFAULT_VRAM_GB, detect_vram, memory_budget_bytes, plan_dataset, topology
from autoseg.planning.presets import PRESETS, VramPreset, select_preset

__all__ = ["DEFAULT_VRAM_GB", "PRESETS", "MemoryEstimate", "VramPreset", "detect_vram", "estimate_training_memory",
           "estimate_training_memory_bytes", "memory_budget_bytes", "plan_dataset", "select_preset", "topology"]
