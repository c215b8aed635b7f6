"""The report's plots as PNG bytes, with matplotlib's Agg canvas (no display, no pyplot state). No Ray, no
TensorFlow.

Each function takes plain numbers (raydet.report.analysis' results, history.jsonl rows) and returns the PNG file's
bytes: :func:`pr_curves`, :func:`confusion`, :func:`training_curves`; :func:`write_png` saves them.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from raydet.report import heavy

DPI = 100


def _figure(width_in: float, height_in: float):
    # Figure + FigureCanvasAgg directly: pyplot would pick a GUI backend and keep every figure alive globally
    Figure, FigureCanvasAgg = heavy.figure()
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain(text: str) -> str:
    """``text`` (a class name or a title holding one: data, not markup) as matplotlib shows it literally: every
    ``$`` escaped, so a name like ``$\\foo$`` is not parsed as mathtext (which raises on unknown commands)."""
    return str(text).replace("$", r"\$")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def pr_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    ap: dict[str, float],
    points: dict[str, tuple[float, float] | None] | None = None,
    title: str = "",
) -> bytes:
    """One precision-recall plot: ``curves`` {class: (recall (R,), precision (R,))}, labelled with ``ap``
    {class: AP}; ``points`` {class: (recall, precision)} marks each class's operating point (e.g. score 0.3).
    Classes whose curve is all nan (no ground truth) are left out."""
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot()
    for name, (recall, precision) in curves.items():
        if np.all(np.isnan(precision)):
            continue
        (line,) = ax.plot(recall, precision, drawstyle="steps-post", label=f"{plain(name)}  AP {ap[name]:.3f}")
        point = (points or {}).get(name)
        if point is not None:
            ax.plot(*point, "o", color=line.get_color(), markersize=5)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=plain(title))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def confusion(matrix: np.ndarray, labels: list[str], title: str = "") -> bytes:
    """A confusion matrix ``matrix`` (K, K) counts, rows = true, columns = predicted, named by ``labels`` (K,):
    each cell shows its count, coloured by its share of its row."""
    m = np.asarray(matrix)
    k = len(labels)
    fig = _figure(1.6 + 0.75 * k, 1.2 + 0.65 * k)
    ax = fig.add_subplot()
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    shown = [plain(label) for label in labels]
    ax.set_xticks(range(k), shown, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), shown, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=plain(title))
    return _png(fig)


def training_curves(history: list[dict]) -> bytes | None:
    """Losses, val AP50 / mAP and the learning rate per epoch from history.jsonl rows (docs/FORMATS.md); None
    for an empty history. Epochs without a value (a key absent or null: epochs that did not validate) are left
    out of that key's line."""
    if not history:
        return None
    epochs = [row["epoch"] for row in history]

    def series(key):  # (epochs, values) where the key has a value: validation runs every few epochs
        pairs = [(e, _number(row.get(key))) for e, row in zip(epochs, history, strict=True)]
        return [e for e, v in pairs if math.isfinite(v)], [v for e, v in pairs if math.isfinite(v)]

    fig = _figure(12, 3.4)
    losses, ap, lr = fig.subplots(1, 3)
    for key, style in (
        ("loss", "-"),
        ("val_loss", "--"),
        ("heatmap_loss", "-"),
        ("val_heatmap_loss", "--"),
        ("box_loss", "-"),
        ("val_box_loss", "--"),
    ):
        if series(key)[0]:
            losses.plot(*series(key), style, marker=".", label=key)
    losses.set(xlabel="epoch", title="losses")
    losses.legend(fontsize=7)
    for key in ("val_ap50", "val_map"):
        ap.plot(*series(key), marker=".", label=key)
    ap.set(xlabel="epoch", ylim=(0, 1), title="validation AP (test split)")
    ap.legend(fontsize=7)
    lr.plot(*series("lr"), marker=".")
    lr.set(xlabel="epoch", title="learning rate (end of epoch)")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in (losses, ap, lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(heavy.ticker().MaxNLocator(integer=True))  # epochs are whole numbers
    return _png(fig)


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")  # null (NaN in JSON) or absent: a gap


def write_png(path: str | os.PathLike, png: bytes) -> Path:
    """Write PNG bytes to ``path`` (folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
