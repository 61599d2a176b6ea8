"""lacunes: reproducible lacune segmentation for brain MRI (VALDO 2021 Task 3)."""

__version__ = "0.1.0"
