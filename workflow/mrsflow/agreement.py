"""Two fitting backends on the same spectra: how far they agree, metabolite by metabolite
(``fitting.compare``; the tables downstream use the primary backend).

Both backends fit the same processed spectrum with the same basis and report amplitudes in
the same data units, scaled by the same water amplitude, so amplitude ratios are
concentration ratios. Per metabolite over the scans both fitted: the median ratio
(other / primary), Bland & Altman (1986, Lancet 327:307) on the percentage difference
``100 (other - primary) / mean``: its mean (bias) and 95 % limits of agreement (mean +- 1.96
SD), and Pearson's r of the water-referenced amplitudes (amplitude / water amplitude).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: what the agreement figure draws (the table has every metabolite both report)
FIGURE_METABOLITES = ("Glu", "Gln", "tNAA", "tCr", "tCho", "Ins")
COLUMNS = ["metabolite", "n", "median_ratio", "bias_pct", "loa_low_pct", "loa_high_pct",
           "r", "primary", "other"]


def _entries(fit: dict) -> dict[str, float]:
    """{name: amplitude / water amplitude} of one fit contract (fitted scans only)."""
    water = fit.get("water_amplitude")
    if not fit.get("success") or not water:
        return {}
    out = {}
    for name, e in {**fit.get("metabolites", {}), **fit.get("combined", {})}.items():
        a = e.get("amplitude")
        if a is not None and math.isfinite(a):
            out[name] = float(a) / float(water)
    return out


def paired_amplitudes(primary: Sequence[dict], other: Sequence[dict]) -> pd.DataFrame:
    """Long table (scan, metabolite, primary, other) of water-referenced amplitudes, for the
    scans both backends fitted (``primary[i]`` and ``other[i]`` fit the same spectrum)."""
    rows = []
    for i, (p, o) in enumerate(zip(primary, other, strict=True)):
        ep, eo = _entries(p), _entries(o)
        for name in sorted(set(ep) & set(eo)):
            rows.append({"scan": i, "metabolite": name, "primary": ep[name], "other": eo[name]})
    return pd.DataFrame(rows, columns=["scan", "metabolite", "primary", "other"])


def agreement_table(pairs: pd.DataFrame, primary: str, other: str) -> pd.DataFrame:
    """One row per metabolite (see the module docstring); metabolites with fewer than 3
    scans where both amplitudes are positive get n and NaN statistics."""
    rows = []
    for name, g in pairs.groupby("metabolite", sort=True):
        g = g[(g.primary > 0) & (g.other > 0)]
        row = {"metabolite": name, "n": len(g), "primary": primary, "other": other}
        if len(g) >= 3:
            mean = (g.other + g.primary) / 2.0
            diff = 100.0 * (g.other - g.primary) / mean
            sd = float(diff.std(ddof=1))
            row.update(median_ratio=float(np.median(g.other / g.primary)),
                       bias_pct=float(diff.mean()), loa_low_pct=float(diff.mean() - 1.96 * sd),
                       loa_high_pct=float(diff.mean() + 1.96 * sd),
                       r=(float(np.corrcoef(g.primary, g.other)[0, 1])
                          if g.primary.std() > 0 and g.other.std() > 0 else math.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def draw(pairs: pd.DataFrame, table: pd.DataFrame, png: Path, *, primary: str, other: str,
         seconds: tuple[float, float] | None = None) -> None:
    """Per metabolite of :data:`FIGURE_METABOLITES`: correlation (other vs primary, identity
    line) above Bland-Altman (% difference vs mean, bias and limits of agreement)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in FIGURE_METABOLITES if m in set(pairs.metabolite)]
    fig, axes = plt.subplots(2, max(len(names), 1), figsize=(2.6 * max(len(names), 1), 5.4),
                             squeeze=False)
    stats = table.set_index("metabolite")
    for j, name in enumerate(names):
        g = pairs[pairs.metabolite == name]
        x, y = 1e3 * g.primary.to_numpy(), 1e3 * g.other.to_numpy()
        ax = axes[0, j]
        ax.scatter(x, y, s=9, color="tab:blue", alpha=0.7)
        lim = [0.0, float(max(x.max(), y.max())) * 1.05]
        ax.plot(lim, lim, color="0.5", lw=0.8)
        r = stats.loc[name, "r"]
        ax.set_title(f"{name}  r = {r:.2f}" if math.isfinite(r) else name, fontsize=9)
        ax.set_xlabel(f"{primary}: amplitude / water x 1e3", fontsize=7)
        if j == 0:
            ax.set_ylabel(f"{other}: amplitude / water x 1e3", fontsize=7)
        ax.tick_params(labelsize=7)
        ax = axes[1, j]
        mean, diff = (x + y) / 2.0, 100.0 * (y - x) / ((x + y) / 2.0)
        ax.scatter(mean, diff, s=9, color="tab:blue", alpha=0.7)
        for v, ls in ((stats.loc[name, "bias_pct"], "-"), (stats.loc[name, "loa_low_pct"], "--"),
                      (stats.loc[name, "loa_high_pct"], "--")):
            if math.isfinite(v):
                ax.axhline(v, color="tab:red", lw=0.9, ls=ls)
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.set_xlabel("mean: amplitude / water x 1e3", fontsize=7)
        if j == 0:
            ax.set_ylabel(f"{other} - {primary} (% of mean)", fontsize=7)
        ax.tick_params(labelsize=7)
    title = f"fitting backends: {other} against {primary} (same spectra, same basis)"
    if seconds and all(s > 0 for s in seconds):
        title += f"; fit jobs {seconds[1]:.0f} s against {seconds[0]:.0f} s"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _benchmark_seconds(paths: Sequence[str | Path]) -> float:
    """Total wall seconds of the jobs' Snakemake benchmark files (column s)."""
    total = 0.0
    for p in paths:
        if Path(p).is_file():
            total += float(pd.read_csv(p, sep="\t")["s"].iloc[0])
    return total


def run(primary_fits: Sequence[str | Path], other_fits: Sequence[str | Path], *,
        primary: str, other: str, tsv: str | Path, png: str | Path,
        benchmarks: tuple[Sequence, Sequence] | None = None) -> pd.DataFrame:
    """Read the two backends' fit JSONs (same order: the same scans), write the agreement
    table (TSV; with ``benchmarks``, the two backends' fit jobs' total wall seconds as the
    columns seconds_primary and seconds_other) and its figure; returns the table."""
    read = [json.loads(Path(p).read_text()) for p in primary_fits]
    read_o = [json.loads(Path(p).read_text()) for p in other_fits]
    # the backend the primary fits name (fitting.backend 'auto' resolves per machine)
    primary = next((f["backend"] for f in read if f.get("backend")), primary)
    pairs = paired_amplitudes(read, read_o)
    table = agreement_table(pairs, primary, other)
    seconds = None
    if benchmarks is not None:
        seconds = (_benchmark_seconds(benchmarks[0]), _benchmark_seconds(benchmarks[1]))
        table["seconds_primary"], table["seconds_other"] = seconds
    Path(tsv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(tsv, sep="\t", index=False, float_format="%.6g", na_rep="NA",
                 lineterminator="\n")
    draw(pairs, table, Path(png), primary=primary, other=other, seconds=seconds)
    return table
