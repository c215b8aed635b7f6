"""raydet.report.browser: a screenshot shrunk to a byte limit, and (slow: it starts Chromium) the probe that counts a
page's images, the broken ones and the errors. report.html itself in Chromium: tests/report/test_page.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
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


@pytest.mark.slow
def test_check_page_counts_images_broken_ones_and_errors(tmp_path):
    if browser.find_chromium() is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, "PNG")
    good = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "page.html"
    page.write_text(
        f'<html><head></head><body><img src="{good}"><img src="{good}"><img src="missing.png">'
        "<script>undefined_function()</script></body></html>"
    )
    # 3 images, 1 of them broken; 2 errors: the image that failed to load and the script's ReferenceError
    assert browser.check_page(page) == {"images": 3, "broken": 1, "errors": 2}
