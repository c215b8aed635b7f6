"""raydet.report.plots: each plot is a PNG of the size asked for, and leaves out what it has no data for."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from raydet.report import plots


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def test_training_curves_is_a_wide_png_and_none_without_history():
    rows = [
        {"epoch": e, "loss": 1.0 / e, "val_loss": None, "val_ap50": 0.2 * e, "val_map": 0.1 * e, "lr": 1e-3}
        for e in (1, 2, 3)
    ]
    assert _size(plots.training_curves(rows)) == (1200, 340)  # 12 x 3.4 inches at 100 dpi
    assert plots.training_curves([]) is None


def test_pr_curves_draw_the_classes_with_ground_truth_only():
    recall = np.linspace(0, 1, 101)
    with_gt = (recall, np.where(recall <= 0.5, 1.0, 0.0))
    no_gt = (recall, np.full(101, np.nan))
    png = plots.pr_curves({"a": with_gt, "b": no_gt}, {"a": 0.505, "b": float("nan")}, {"a": (0.5, 1.0), "b": None})
    assert _size(png) == (520, 420)
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)

    # matplotlib's first colour (#1f77b4) is there for class a; the second (#ff7f0e), b's, is not
    def has(colour):
        return bool((np.abs(rgb - colour).sum(axis=2) < 30).any())

    assert has((0x1F, 0x77, 0xB4)) and not has((0xFF, 0x7F, 0x0E))


def test_confusion_grows_with_the_classes():
    small = _size(plots.confusion(np.eye(2, dtype=int), ["a", "background"]))
    large = _size(plots.confusion(np.eye(5, dtype=int), ["a", "b", "c", "d", "background"]))
    assert large[0] > small[0] and large[1] > small[1]


def test_write_png_makes_folders(tmp_path):
    path = plots.write_png(tmp_path / "a" / "b.png", plots.training_curves([{"epoch": 1, "loss": 1.0}]))
    assert path.is_file() and _size(path.read_bytes()) == (1200, 340)


def test_class_names_are_shown_literally_not_parsed_as_mathtext():
    import numpy as np

    from raydet.report import plots

    names = ["$\\foo$", "<b>x</b>", "a $ b"]
    curves = {n: (np.linspace(0, 1, 5), np.linspace(1, 0.5, 5)) for n in names}
    assert plots.pr_curves(curves, {n: 0.5 for n in names}, title=f"{names[0]}: pr").startswith(b"\x89PNG")
    assert plots.confusion(np.eye(3, dtype=int), names, title=names[0]).startswith(b"\x89PNG")
