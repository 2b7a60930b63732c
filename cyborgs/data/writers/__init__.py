"""On-disk writers of the synthetic scenes, one standard layout per module."""

from cyborgs.data.writers.build import DONE_FILE, LAYOUTS, PRESETS, Preset, build_demo_data

__all__ = ["DONE_FILE", "LAYOUTS", "PRESETS", "Preset", "build_demo_data"]
