"""Training: recipe presets, data pipeline, loop with run folder, resume and DDP."""

from lacunes.training.config import PRESETS, TrainConfig, get_preset

__all__ = ["PRESETS", "TrainConfig", "get_preset"]
