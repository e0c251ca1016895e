"""QC pages: one image per participant and step (a row per scan), and single-scan images.

Spectra: drawing functions take a matplotlib ``Figure`` or ``SubFigure`` and draw one
scan's panel into it (``preprocess.draw_processed``, ``fit.draw_fit``, both using
:func:`draw_water` for the water reference); :func:`save_rows` stacks them. Figures are
built with ``matplotlib.figure.Figure`` (Agg), without pyplot, so no GUI backend or global
figure state is involved, and PNGs carry no software or date metadata (byte-identical
reruns). Voxel placements are pictures, not plots: rows composed as Pillow images
(``segment.voxel_page_row``) are stacked by :func:`save_images`.
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


def _num(value, fmt: str) -> str:
    """A QC number for a title or log line ('n/a' where the scan has none)."""
    return "n/a" if value is None else format(value, fmt)


def qc_title(name: str, q: dict) -> str:
    """'<name>: SNR .., NAA FWHM .. Hz, water .. Hz' (or why the scan was not processed)."""
    if q.get("usable") is False:
        return f"{name}: not processed ({'; '.join(q['sanity']['exclude'])})"
    return (f"{name}: SNR {_num(q['snr'], '.1f')}, NAA FWHM "
            f"{_num(q['linewidth_naa_hz'], '.2f')} Hz, water "
            f"{_num(q['linewidth_water_hz'], '.2f')} Hz")


def draw_water(ax, fid, dwell_s: float, f0_mhz: float) -> None:
    """The processed water reference (real part, 3.9-5.4 ppm, zero-filled x2) into ``ax``."""
    from mrsflow import qc

    spec, ppm = qc.spectrum(fid, dwell_s, f0_mhz, zero_fill=2)
    sel = (ppm >= 3.9) & (ppm <= 5.4)
    ax.plot(ppm[sel], spec.real[sel], lw=0.8, color="tab:blue")
    ax.set_xlim(5.4, 3.9)
    ax.set_xlabel("ppm")
    ax.set_yticks([])
    ax.set_title("water", fontsize=9)


def save_one(path: Path | str, draw: Draw, *, width_in: float, height_in: float,
             dpi: int = 110, facecolor: str = "white") -> Path:
    """A single-scan PNG (the per-scan CLI commands)."""
    return save_rows(path, [draw], width_in=width_in, row_height_in=height_in, dpi=dpi,
                     facecolor=facecolor)


def save_images(path: Path | str, rows: Sequence, *, background: str = "black") -> Path:
    """Stack Pillow images (one per row, centred) top to bottom into one image: PNG, or
    JPEG (quality 85) for a ``.jpg`` path (T1 slices: a fifth of the PNG's size)."""
    from PIL import Image

    if not rows:
        raise ValueError(f"{path}: a QC page needs at least one row")
    width = max(r.width for r in rows)
    page = Image.new("RGB", (width, sum(r.height for r in rows)), background)
    y = 0
    for r in rows:
        page.paste(r, ((width - r.width) // 2, y))
        y += r.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        page.save(path, format="JPEG", quality=85)
    else:
        page.save(path, format="PNG")
    return path
