"""raydet.evaluate.predict with the hand-set detector (tests/handset.py): every detection above the threshold listed in
original pixels and drawn, bad files reported, predictions.json kept when a predict is interrupted, a RUN whose
config.json or model is not raydet's refused."""

from __future__ import annotations

import json

import handset as H
import numpy as np
import pytest
from PIL import Image
from printed import assert_printed_locations_exist

from raydet.config import PredictConfig
from raydet.errors import UserError
from raydet.evaluate.predict import collect_images, predict
from raydet.export.runner import ModelRunner

A, B, C, D = H.Obj(1, 1, 0, 5, 1), H.Obj(5, 2, 1, 4, 2), H.Obj(2, 5, 0, 3, 2), H.Obj(6, 6, 0, 2, 1)
SCENE = [A, B, C, D]  # scores 0.9975 (red), 0.9734 (blue), 0.7685 (red), 0.2315 (red: under the default 0.3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return H.write_run(tmp_path_factory.mktemp("predict") / "run")


def _inputs(root):
    """scene.png (32 x 32: the model's own size, so no resampling), wide.png (64 x 32: one red object painted
    over x 40..48, y 8..12, i.e. cell (5, 2) once squeezed to 32 x 32), an empty file, garbage bytes, a
    truncated JPEG."""
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(H.paint(SCENE)).save(folder / "scene.png")
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[8:12, 40:48] = (255, 102, 0)
    Image.fromarray(wide).save(folder / "sub" / "wide.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"not an image at all")
    Image.fromarray(np.full((60, 60, 3), 90, np.uint8)).save(folder / "square.jpg", quality=90)
    good = (folder / "square.jpg").read_bytes()
    (folder / "square.jpg").unlink()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    return folder


def test_collect_images_recurses_sorted_and_reports_missing(tmp_path):
    folder = _inputs(tmp_path)
    (folder / "notes.txt").write_text("not an image suffix, ignored in a folder")
    files, skipped = collect_images([str(folder), str(folder / "scene.png"), str(tmp_path / "nope")])
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "cut.jpg",
        "empty.jpg",
        "garbage.png",
        "scene.png",
        "sub/wide.png",
    ]  # scene.png named twice: once
    assert skipped == [{"file": str(tmp_path / "nope"), "reason": "no such file or folder"}]


@pytest.mark.parametrize("model, box_tol, score_tol", [("float", 1e-4, 1e-6), ("int8", 0.1, 0.01)])
def test_predict_lists_and_draws_every_detection(run_dir, tmp_path, model, box_tol, score_tol, capsys):
    from raydet.report import draw

    folder = _inputs(tmp_path)
    out = tmp_path / "out"
    report = predict(PredictConfig(run=str(run_dir), paths=(str(folder),), out=str(out), model=model))
    assert_printed_locations_exist(capsys.readouterr().out, str(out), at_least=2)

    # 1. bad files are reported with a reason; the good ones are processed
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"empty.jpg", "garbage.png", "cut.jpg"}
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["cut.jpg"].lower()
    on_disk = json.loads((out / "predictions.json").read_text())
    assert on_disk == report and report["complete"] is True and report["score_threshold"] == 0.3
    by_name = {img["output"]: img for img in on_disk["images"]}
    assert set(by_name) == {"scene.png", "wide.png"}

    # 2. scene.png: A, B and C (score >= 0.3; D's 0.23 is not), best first, boxes = normalized * 32 px
    dets = by_name["scene.png"]["detections"]
    assert [(d["class"], d["label"]) for d in dets] == [("red", 0), ("blue", 1), ("red", 0)]
    np.testing.assert_allclose([d["score"] for d in dets], [H.score(5), H.score(4), H.score(3)], atol=score_tol)
    # A: centre (1.5 / 8, 1.5 / 8) = 0.1875, side 0.2 -> (0.0875, 0.0875, 0.2875, 0.2875) * 32 = (2.8, ..., 9.2)
    np.testing.assert_allclose(dets[0]["box"], [2.8, 2.8, 9.2, 9.2], atol=box_tol)
    np.testing.assert_allclose([d["box"] for d in dets], [H.box(o) * 32 for o in (A, B, C)], atol=box_tol)

    # 3. wide.png, 64 x 32: centre ((5 + 0.5) / 8 * 64, (2 + 0.5) / 8 * 32) = (44, 10); w = h normalized, so the
    #    box is twice as wide as tall in pixels (its side itself depends on how the resize blurred the green)
    wide = by_name["wide.png"]
    assert (wide["width"], wide["height"]) == (64, 32)
    (det,) = wide["detections"]
    x0, y0, x1, y1 = det["box"]
    assert det["class"] == "red"
    np.testing.assert_allclose([(x0 + x1) / 2, (y0 + y1) / 2], [44, 10], atol=box_tol)
    assert (x1 - x0) == pytest.approx(2 * (y1 - y0), rel=1e-6)

    # 4. the drawing: 32 x 32 is upscaled by ceil(384 / 32) = 12; A's left edge runs along x = 2.8 * 12 = 33.6 ->
    #    34 at mid-height y = 0.1875 * 384 = 72 in the prediction colour; D's left edge (x 0.7125 * 384 = 273.6 ->
    #    274, y 0.8125 * 384 = 312) is not drawn: black
    with Image.open(out / "scene.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape == (384, 384, 3)
    assert tuple(pixels[72, 34]) == draw.PRED_COLOR
    assert tuple(pixels[312, 274]) == (0, 0, 0)


def test_score_threshold_keeps_the_best_and_the_image(run_dir, tmp_path):
    folder = _inputs(tmp_path)
    scene = str(folder / "scene.png")
    report = predict(
        PredictConfig(run=str(run_dir), paths=(scene,), out=str(tmp_path / "o"), model="float", score_threshold=0.9)
    )  # A 0.9975 and B 0.9734 pass, C 0.7685 does not
    assert [d["class"] for d in report["images"][0]["detections"]] == ["red", "blue"]
    report = predict(
        PredictConfig(run=str(run_dir), paths=(scene,), out=str(tmp_path / "o"), model="float", score_threshold=0.999)
    )  # nothing reaches 0.999
    assert [img["detections"] for img in report["images"]] == [[]]
    assert (tmp_path / "o" / "scene.png").is_file()


def test_interrupted_predict_keeps_the_finished_chunks(run_dir, tmp_path, monkeypatch):
    import raydet.evaluate.predict

    folder = tmp_path / "in"
    folder.mkdir()
    for name in "abcde":
        Image.fromarray(H.paint(SCENE)).save(folder / f"{name}.png")
    monkeypatch.setattr(raydet.evaluate.predict, "CHUNK", 2)
    calls, original = [], ModelRunner.predict

    def predict_then_fail(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("power cut")  # the second chunk (c.png, d.png) never finishes
        return original(self, images)

    monkeypatch.setattr(ModelRunner, "predict", predict_then_fail)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="power cut"):
        predict(PredictConfig(run=str(run_dir), paths=(str(folder),), out=str(out), model="float"))
    kept = json.loads((out / "predictions.json").read_text())
    assert kept["complete"] is False
    assert [img["output"] for img in kept["images"]] == ["a.png", "b.png"]  # the first chunk of 2, whole
    assert [len(img["detections"]) for img in kept["images"]] == [3, 3]
    assert (out / "b.png").is_file() and not (out / "c.png").exists()
    assert not list(out.glob("*.tmp"))


def test_a_foreign_run_is_refused_before_any_output(tmp_path):
    old = H.write_old_run(tmp_path / "old")
    with pytest.raises(UserError, match="config.json: 'model' must be an object naming its backbone"):
        predict(PredictConfig(run=str(old), paths=(str(tmp_path),), out=str(tmp_path / "o"), model="float"))
    assert not (tmp_path / "o").exists()


def test_missing_model_names_the_existing_ones(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="this run has: float, int8"):
        predict(PredictConfig(run=str(run_dir), paths=(str(tmp_path),), out=str(tmp_path / "o"), model="dynamic"))


def tem_jpeg() -> bytes:
    """A normal JPEG with a TEM marker (0xFF01, a marker without a length) right after SOI: libjpeg-turbo skips
    it, Pillow's JPEG opener does not know it."""
    import io

    buf = io.BytesIO()
    Image.fromarray(H.paint(SCENE)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[:2] + b"\xff\x01" + data[2:]


def test_a_jpeg_only_libjpeg_turbo_reads_is_predicted_and_drawn(run_dir, tmp_path):
    import io

    import simplejpeg
    from PIL import UnidentifiedImageError

    data = tem_jpeg()
    with pytest.raises(UnidentifiedImageError):  # the reader predict used to draw with refuses it
        Image.open(io.BytesIO(data))
    assert simplejpeg.decode_jpeg(data).shape == (32, 32, 3)  # the one decode_resize uses reads it
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tem.jpg").write_bytes(data)
    report = predict(
        PredictConfig(run=str(run_dir), paths=(str(tmp_path / "in"),), out=str(tmp_path / "out"), model="float")
    )
    assert report["skipped"] == [] and [img["output"] for img in report["images"]] == ["tem.png"]
    assert len(report["images"][0]["detections"]) == 3
    with Image.open(tmp_path / "out" / "tem.png") as im:
        assert im.size == (384, 384)


def test_predict_refuses_an_image_over_max_pixels_naming_its_size(run_dir, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(H.paint(SCENE)).save(tmp_path / "in" / "scene.png")
    report = predict(
        PredictConfig(
            run=str(run_dir), paths=(str(tmp_path / "in"),), out=str(tmp_path / "out"), model="float", max_pixels=1023
        )
    )
    assert report["images"] == []
    (skip,) = report["skipped"]
    assert "32 x 32 = 1,024 pixels" in skip["reason"] and "1,023" in skip["reason"]
    assert not skip["reason"].startswith("cannot be drawn")  # refused before the model saw it


@pytest.mark.parametrize("size", [(4000, 1), (1, 4000)])
def test_a_thin_image_is_drawn_within_the_pixel_cap(tmp_path, size):
    """A 4000 x 1 strip upscaled to a 384 px short side would be 1.5 gigapixels (4.4 GB); the drawing is held to
    MAX_DRAW_PIXELS whatever the aspect, and drawing it costs well under 100 MB."""
    import resource
    import tracemalloc

    from raydet.evaluate.predict import draw_prediction
    from raydet.report import draw

    path = tmp_path / "thin.png"
    Image.new("RGB", size, (10, 200, 30)).save(path)
    w, h = size
    box = np.array([[0, 0, w, h]], np.float64)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's peak so far
    tracemalloc.start()
    try:
        drawn = draw_prediction(path, box, ["red"], [0.9], max_pixels=10**8)
        _, traced_peak = tracemalloc.get_traced_memory()  # numpy's buffers are traced
    finally:
        tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    assert traced_peak < 100 * 2**20 and rss_growth < 100 * 2**20, (traced_peak, rss_growth)
    out_h, out_w = drawn.shape[:2]
    assert out_h * out_w <= draw.MAX_DRAW_PIXELS and min(out_h, out_w) >= 1
    assert (out_w > out_h) == (w > h)  # the aspect kept: still a strip
    written = draw.write_png(tmp_path / "thin_drawn.png", drawn)
    assert written.stat().st_size < 2 * 2**20
