"""raydet.report.browser: a screenshot shrunk to a byte limit. A screenshot of report.html in Chromium (slow):
tests/report/test_page.py."""

from __future__ import annotations

import numpy as np
from PIL import Image

from raydet.report import browser


def test_shrink_png_goes_to_256_colours_then_smaller_until_it_fits(tmp_path):
    """200 x 200 of noise: ~1 byte a pixel once in a palette, which no deflate shrinks: 40,000 bytes are over
    30,000; 0.8x, 160 x 160 = 25,600 (and the 768-byte palette) fits."""
    path = tmp_path / "shot.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)).save(path)
    browser.shrink_png(path, 30_000)
    with Image.open(path) as im:
        assert (im.mode, im.size) == ("P", (160, 160))
    assert path.stat().st_size <= 30_000
    small = tmp_path / "small.png"
    Image.new("RGB", (50, 40), (9, 9, 9)).save(small)
    browser.shrink_png(small, 100_000)  # fits at once: only the palette
    with Image.open(small) as im:
        assert (im.mode, im.size) == ("P", (50, 40))
