"""Where the MNI152 template files live: the copy shipped inside nilearn's package data
(used by the twin's anatomy and by the T1-to-MNI registration; nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def nilearn_data_dir() -> Path:
    """nilearn's ``datasets/data`` folder (holds the MNI152 2009 T1 and tissue maps)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("nilearn is needed for the MNI152 template (pip install nilearn)")
    return Path(spec.origin).parent / "datasets" / "data"
