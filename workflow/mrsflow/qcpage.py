"""QC pages: one PNG per participant and step (a row per scan), and single-scan PNGs.

Drawing functions take a matplotlib ``Figure`` or ``SubFigure`` and draw one scan's panel
into it (``preprocess.draw_processed``, ``fit.draw_fit``, ``segment.draw_overlay``); this
module stacks them. Figures are built with ``matplotlib.figure.Figure`` (Agg), without
pyplot, so no GUI backend or global figure state is involved, and PNGs carry no software
or date metadata (byte-identical reruns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

Draw = Callable[[object], None]


def save_rows(
    path: Path | str,
    rows: Sequence[Draw],
    *,
    width_in: float,
    row_height_in: float,
    dpi: int = 90,
    facecolor: str = "white",
) -> Path:
    """Draw ``rows`` (one callable per scan, called with its SubFigure) stacked top to
    bottom into one image of ``width_in`` x ``row_height_in * len(rows)`` inches: PNG, or
    JPEG (quality 85) for a ``.jpg`` path (T1 slices: a fifth of the PNG's size)."""
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError(f"{path}: a QC page needs at least one row")
    fig = Figure(figsize=(width_in, row_height_in * len(rows)), facecolor=facecolor)
    subs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for sub, draw in zip(subs, rows, strict=True):
        sub.set_facecolor(facecolor)
        draw(sub)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):  # photographic content (T1 slices)
        fig.savefig(path, dpi=dpi, facecolor=facecolor, pil_kwargs={"quality": 85})
    else:
        fig.savefig(path, dpi=dpi, facecolor=facecolor, metadata={"Software": None})
    return path


def save_one(path: Path | str, draw: Draw, *, width_in: float, height_in: float,
             dpi: int = 110, facecolor: str = "white") -> Path:
    """A single-scan PNG (the per-scan CLI commands)."""
    return save_rows(path, [draw], width_in=width_in, row_height_in=height_in, dpi=dpi,
                     facecolor=facecolor)
