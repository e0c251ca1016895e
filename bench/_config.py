"""The project's config for the benchmarks: config/config.yaml with overlays merged over it
key by key (as Snakemake merges several --configfile), shared by the bench scripts."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: nested mappings key by key, the rest replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out


def merged_config(overlays=()) -> dict:
    """config/config.yaml with ``overlays`` (YAML files) merged over it in order."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for path in overlays:
        cfg = deep_merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    return cfg
