"""The project's one figure style: sizes for journal columns, colour-blind-safe colours, embedded fonts.

Use :func:`use_style` once (scripts, notebooks), :func:`style_context` around one figure or :func:`styled`
on a plotting function, and save with :func:`save_figure`, which embeds TrueType fonts (editable text in
PDF/SVG) and never silently replaces an existing result.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import matplotlib as mpl
from cycler import cycler
from matplotlib.figure import Figure

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO: dict[str, str] = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
#: Categorical colour cycle (yellow last: it is faint on white).
PALETTE: tuple[str, ...] = tuple(OKABE_ITO[c] for c in (
    "blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "black", "yellow"))
#: Fixed colour per class, the same in every figure.
CLASS_COLORS: dict[str, str] = {
    "glioma": OKABE_ITO["vermillion"], "meningioma": OKABE_ITO["blue"],
    "no_tumor": OKABE_ITO["bluish_green"], "pituitary": OKABE_ITO["reddish_purple"],
}
#: Attribution heatmaps (perceptually uniform; never jet).
HEATMAP_CMAP = "magma"
#: Signed attributions (e.g. SHAP), centred on zero; ColorBrewer RdBu is colour-blind-safe.
DIVERGING_CMAP = "RdBu_r"
#: Matrices such as confusion matrices.
MATRIX_CMAP = "viridis"

#: Figure sizes in inches (width, height) for a one-column (3.5 in) and two-column (7.2 in) layout.
ONE_COLUMN: tuple[float, float] = (3.5, 2.8)
TWO_COLUMN: tuple[float, float] = (7.2, 3.2)

#: Fonts kept as text (TrueType / Type 42), not outlines or Type 3: editable and journal-compliant.
FONT_RC: dict[str, object] = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}

RC: dict[str, object] = {
    **FONT_RC,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.titlesize": 9,
    "axes.prop_cycle": cycler(color=list(PALETTE)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "lines.linewidth": 1.3,
    "image.cmap": "viridis",
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}

# Timestamps left out so that re-running a script gives byte-identical vector files.
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def use_style() -> None:
    """Apply the project style to matplotlib globally."""
    mpl.rcParams.update(RC)


@contextmanager
def style_context() -> Iterator[None]:
    """Apply the project style inside a ``with`` block only."""
    with mpl.rc_context(RC):
        yield


F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Decorator: run a plotting function inside :func:`style_context`, so every figure it returns has the
    project's text sizes, colours and layout whoever calls it."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style_context():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def class_color(name: str, index: int = 0) -> str:
    """The class's fixed colour, or the palette colour at ``index`` for a name outside the four classes."""
    return CLASS_COLORS.get(name, PALETTE[index % len(PALETTE)])


def save_figure(
    fig: Figure,
    out_stem: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 300,
    overwrite: bool = False,
) -> list[Path]:
    """Save ``fig`` as ``<out_stem>.<fmt>`` for each format; returns the paths written.

    Raises FileExistsError naming the first existing target unless ``overwrite`` (nothing is written
    then). Fonts are embedded as TrueType whatever the global rcParams say.
    """
    paths = [Path(f"{out_stem}.{fmt.lstrip('.')}") for fmt in formats]
    if not overwrite:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if paths:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
    with mpl.rc_context(FONT_RC):
        for path in paths:
            fmt = path.suffix[1:].lower()
            fig.savefig(path, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))
    return paths


def clipped_texts(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """What sticks out of the figure (an axes named by its title or y label, the suptitle, a figure
    legend): :func:`save_figure` keeps the exact column width, so it would be cut off in the saved file.
    Draws the figure once (Agg); empty when everything fits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height

    def outside(box) -> bool:
        return (box is not None and (box.x0 < -tolerance or box.y0 < -tolerance or box.x1 > width + tolerance
                                     or box.y1 > height + tolerance))

    out = []
    for i, ax in enumerate(fig.axes):
        if outside(ax.get_tightbbox(renderer)):
            out.append(f"axes {i} ({ax.get_title() or ax.get_ylabel() or 'untitled'})")
    for artist in [fig._suptitle, *fig.legends, *fig.texts]:
        if artist is not None and artist.get_visible() and outside(artist.get_window_extent(renderer)):
            out.append(f"{type(artist).__name__} {getattr(artist, 'get_text', lambda: '')()}".strip())
    return out


def figure_png(fig, dpi: int = 120, close: bool = False) -> bytes:
    """A matplotlib figure as PNG bytes (fonts as in the project style); `close` frees it afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()
