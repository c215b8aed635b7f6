"""raydet.evaluate.outputs: where a local RUN's evaluation goes, ground truth back in pixels, Markdown cells that
show data literally, and report.json without NaN. (A RUN in a bucket, its eval.json pointer and an upload cut
short: tests/cluster/test_storage.py.)"""

from __future__ import annotations

import json

import numpy as np

from raydet.evaluate.outputs import _json_safe, eval_dir, ground_truth_pixels, md_text, published_dir


def test_a_local_run_is_evaluated_into_run_eval(tmp_path):
    assert eval_dir(tmp_path) == str(tmp_path / "eval")
    assert published_dir(tmp_path, "a1b2") == str(tmp_path / "eval")  # no id: a local folder is swapped, not pointed at


def test_ground_truth_pixels_drops_the_padding_and_scales_per_axis():
    boxes = np.array([[0.5, 0.25, 1.0, 0.75], [0.0, 0.1, 0.2, 0.3], [0.0, 0.0, 0.0, 0.0]], np.float32)
    labels = np.array([2, 0, -1], np.int32)
    pixels, kept = ground_truth_pixels(boxes, labels, 2, width=200, height=100)
    np.testing.assert_allclose(pixels, [[100, 25, 200, 75], [0, 10, 40, 30]], atol=1e-4)
    assert kept.tolist() == [2, 0] and kept.dtype == np.int64


def test_md_text_escapes_what_markdown_would_read_and_keeps_one_line():
    assert md_text("a|b") == "a\\|b"  # would split a table cell
    assert md_text("<b>bold</b>") == "\\<b\\>bold\\</b\\>"  # would be HTML
    assert md_text("snake_case *star* $x$ a&b ~s~ [l] `c` \\") == (
        "snake\\_case \\*star\\* \\$x\\$ a\\&b \\~s\\~ \\[l\\] \\`c\\` \\\\"
    )
    assert md_text("two\nlines") == "two lines"
    assert md_text(3) == "3"


def test_nan_metrics_become_null_in_json():
    report = {"models": {"int8": {"coco_map": float("nan"), "ap": [0.5, float("inf")], "name": "x"}}}
    assert json.dumps(_json_safe(report)) == '{"models": {"int8": {"coco_map": null, "ap": [0.5, null], "name": "x"}}}'
