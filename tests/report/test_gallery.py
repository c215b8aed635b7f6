"""raydet.report.gallery: the report's test images, their pixels read back from PREP or, sharper, from the dataset's
own file when it still matches, and encoded as JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from prep_helpers import make_prep, rows_of

from raydet.report.gallery import jpeg, original_image, rows_by_file


def test_rows_by_file_gives_the_asked_files_of_the_split_with_their_pixels(tmp_path):
    prep = make_prep(tmp_path / "prep", n_train=4, n_test=4)
    written = rows_of(4, seed=1, prefix="test")  # make_prep's test split: seed + 1, two shards of 2 rows
    got = rows_by_file(prep, "test", {"test_0001.png", "test_0003.png", "train_0000.png"})
    assert sorted(got) == ["test_0001.png", "test_0003.png"]  # a file of another split is absent
    for i in (1, 3):
        row = got[f"test_{i:04d}.png"]
        assert (row["file"], row["width"], row["height"]) == (f"test_{i:04d}.png", 32, 32)
        np.testing.assert_array_equal(row["image"], written[i]["image"])
    assert rows_by_file(prep, "test", set()) == {}


def test_original_image_is_the_datasets_file_when_it_matches_else_the_prep_pixels_stretched(tmp_path):
    row = {"file": "a.png", "width": 64, "height": 32, "image": np.full((16, 16, 3), (10, 20, 30), np.uint8)}
    stretched = original_image(None, row)
    assert stretched.shape == (32, 64, 3) and (stretched == (10, 20, 30)).all()
    own = np.zeros((32, 64, 3), np.uint8)
    own[:, 32:] = (250, 0, 0)  # a file the PREP pixels could not give
    Image.fromarray(own).save(tmp_path / "a.png")
    np.testing.assert_array_equal(original_image(str(tmp_path), row), own)
    assert (original_image(str(tmp_path), row, max_bytes=10) == (10, 20, 30)).all()  # over the byte limit: PREP's
    Image.fromarray(own[:, :40]).save(tmp_path / "a.png")  # the file changed size since prepare: PREP's
    assert (original_image(str(tmp_path), row) == (10, 20, 30)).all()
    assert (original_image(str(tmp_path / "moved"), row) == (10, 20, 30)).all()


def test_jpeg_decodes_to_the_image():
    image = np.zeros((24, 40, 3), np.uint8)
    image[:, 20:] = (200, 40, 40)
    data = jpeg(image)
    assert data[:2] == b"\xff\xd8"
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert back.shape == (24, 40, 3)
    assert np.abs(back[:, 24:] - (200, 40, 40)).max() <= 8 and back[:, :16].max() <= 8  # RGB order kept
