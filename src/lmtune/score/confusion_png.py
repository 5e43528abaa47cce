"""A confusion matrix drawn as a PNG with matplotlib (Agg, no pyplot state).

Rows are the reference labels, columns the predicted ones (possibly "(invalid)").
A cell's colour is its share of the row, so classes of different sizes compare
fairly; each cell holds its count. matplotlib is imported only when a picture is
drawn, so commands that never draw one don't pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CMAP = "Blues"
DPI = 100


def row_shares(counts: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each count as a fraction of its row's total (0 for an empty row)."""
    return [[n / sum(row) if sum(row) else 0.0 for n in row] for row in counts]


def confusion_figure(rows: Sequence[str], columns: Sequence[str], counts: Sequence[Sequence[int]]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shares = row_shares(counts)
    fig = Figure(figsize=(2.8 + 0.9 * len(columns), 1.8 + 0.6 * len(rows)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap=CMAP, vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("reference label")
    ax.set_title(f"Confusion matrix ({sum(map(sum, counts))} examples)")
    fig.colorbar(image, ax=ax, label="share of reference row")
    return fig


def write_confusion_png(path: Path, rows: Sequence[str], columns: Sequence[str], counts: Sequence[Sequence[int]]) -> Path:
    fig = confusion_figure(rows, columns, counts)
    # no version stamp: same input, same bytes
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))
    return path
