#!/usr/bin/env python3
"""``lacunes calibrate`` from a checkout (kept for the commands in training/README.md): fit the second
stage on training subjects, choose the operating point on validation subjects, store both in the
checkpoint. See :mod:`lacunes.calibration` and ``lacunes calibrate --help``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lacunes.calibration import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
