"""Planning: from a fingerprint and a VRAM budget to ``plans.json`` (spacing, patch, batch, network)."""

from autoseg.planning.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans

__all__ = ["ChannelNormalization", "ConfigurationPlan", "NetworkPlan", "Plans"]
