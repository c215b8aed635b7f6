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


BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two line colours (C0, C1)


def _has(rgb: np.ndarray, colour) -> bool:
    return bool((np.abs(rgb.astype(int) - colour).sum(axis=2) < 30).any())


def test_training_curves_is_a_wide_png_and_none_without_history():
    rows = [
        {"epoch": e, "loss": 1.0 / e, "val_loss": None, "val_ap50": 0.2 * e, "val_map": 0.1 * e, "lr": 1e-3}
        for e in (1, 2, 3)
    ]
    png = plots.training_curves(rows)
    assert _size(png) == (1200, 340)  # 12 x 3.4 inches at 100 dpi
    assert plots.training_curves([]) is None
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    losses, ap, lr = rgb[:, :400], rgb[:, 400:800], rgb[:, 800:]  # three panels side by side
    # losses: only "loss" has values (C0); val_loss, null in every epoch, is left out: no line, no legend entry
    assert _has(losses, BLUE) and not _has(losses, ORANGE)
    # validation AP: val_ap50 (C0) and val_map (C1); the learning rate: one line (C0)
    assert _has(ap, BLUE) and _has(ap, ORANGE)
    assert _has(lr, BLUE) and not _has(lr, ORANGE)
    # with val_loss in one epoch, its line (a marker) and legend entry appear in the losses panel
    rows[1]["val_loss"] = 0.7
    with Image.open(io.BytesIO(plots.training_curves(rows))) as im:
        assert _has(np.asarray(im.convert("RGB"))[:, :400], ORANGE)


def test_pr_curves_draw_the_classes_with_ground_truth_only():
    recall = np.linspace(0, 1, 101)
    with_gt = (recall, np.where(recall <= 0.5, 1.0, 0.0))
    no_gt = (recall, np.full(101, np.nan))
    png = plots.pr_curves({"a": with_gt, "b": no_gt}, {"a": 0.505, "b": float("nan")}, {"a": (0.5, 1.0), "b": None})
    assert _size(png) == (520, 420)
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)

    # matplotlib's first colour (#1f77b4) is there for class a; the second (#ff7f0e), b's, is not
    assert _has(rgb, BLUE) and not _has(rgb, ORANGE)


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
