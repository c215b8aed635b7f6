"""raydet.ingest.synth: a deterministic VOC devkit of shapes whose boxes match the drawn pixels. No Ray needed."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from raydet.config import SynthConfig
from raydet.detector.boxes import iou_matrix
from raydet.ingest import discovery, synth, voc


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path, capsys):
    a = synth.write_synthetic(SynthConfig(out=str(tmp_path / "a"), images=12, image_size=48, seed=3))
    synth.write_synthetic(SynthConfig(out=str(tmp_path / "b"), images=12, image_size=48, seed=3))
    synth.write_synthetic(SynthConfig(out=str(tmp_path / "c"), images=12, image_size=48, seed=4))
    fa, fb, fc = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert fa == fb
    assert fa["JPEGImages/000001.jpg"] != fc["JPEGImages/000001.jpg"]
    # 12 images -> 12 xml + 12 jpg + train.txt + test.txt + synth.json
    assert len(fa) == 12 + 12 + 3
    assert a["out"] == str(tmp_path / "a") and a["images"] == 12
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("synth: 12 images (10 train, 2 test) of 48 px") and str(tmp_path / "a") in out[0]


def test_counts_split_and_discovery_as_a_devkit(tmp_path):
    cfg = SynthConfig(out=str(tmp_path / "s"), images=50, image_size=64, test_fraction=0.2)
    summary = synth.write_synthetic(cfg)
    # round(50 * 0.2) = 10 test images, 40 train
    assert (summary["train"], summary["test"]) == (40, 10)
    drawn = [objects for i in range(50) for objects in synth.make_image(cfg, i, noise=False)[1]]
    assert summary["objects"] == len(drawn) and summary["classes"] == ["circle", "square", "triangle", "cross"]
    assert summary["objects_per_class"] == dict(Counter(name for name, _ in drawn))
    main = tmp_path / "s" / "ImageSets" / "Main"
    train, test = main.joinpath("train.txt").read_text().split(), main.joinpath("test.txt").read_text().split()
    assert len(train) == 40 and len(test) == 10 and not set(train) & set(test)
    assert sorted(train + test) == [f"{i:06d}" for i in range(1, 51)]
    ds = discovery.discover(cfg.out)
    assert ds.layout == "devkit" and len(ds.annotations) == 50 and ds.unlabeled_images == ()
    assert Counter(r.split for r in ds.annotations) == {"train": 40, "test": 10}
    ref = ds.annotations[0]
    rec = voc.parse_voc(ds.read(ref.annotation), classes=synth.CLASS_NAMES, source=ref.annotation)
    assert (rec.width, rec.height, rec.dropped) == (64, 64, ())
    path = discovery.resolve_image(ds, ref, rec.filename)
    assert path == "JPEGImages/000001.jpg"
    with Image.open(tmp_path / "s" / path) as im:
        assert (im.size, im.mode) == ((64, 64), "RGB")


def test_rewrite_clears_an_earlier_larger_set_but_never_a_foreign_folder(tmp_path):
    out = tmp_path / "s"
    synth.write_synthetic(SynthConfig(out=str(out), images=6, image_size=32))
    synth.write_synthetic(SynthConfig(out=str(out), images=3, image_size=32))
    assert len(list((out / "Annotations").iterdir())) == 3  # no stale 000004..000006
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not empty"):
        synth.write_synthetic(SynthConfig(out=str(foreign), images=3, image_size=32))
    assert (foreign / "holiday.jpg").exists()


def test_xml_is_laid_out_as_labelimg_writes_it():
    text = synth.voc_xml("000007.jpg", 64, [("star", (3, 4, 30, 41))])
    assert text.startswith("<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>000007.jpg</filename>\n")
    assert (
        "\t<object>\n\t\t<name>star</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        "\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>3</xmin>\n\t\t\t<ymin>4</ymin>\n"
        "\t\t\t<xmax>30</xmax>\n\t\t\t<ymax>41</ymax>\n\t\t</bndbox>\n\t</object>\n"
    ) in text
    rec = voc.parse_voc(text.encode())
    assert (rec.filename, rec.width, rec.height) == ("000007.jpg", 64, 64)
    assert rec.objects == (voc.VocObject("star", (3.0, 4.0, 30.0, 41.0)),)


def wanted_objects(cfg: SynthConfig, index: int) -> int:
    """How many objects image ``index`` asks for: the draw right after its background (as make_image does)."""
    rng = synth.image_rng(cfg, index)
    synth._background(rng, cfg.image_size)
    return int(rng.integers(1, cfg.max_objects + 1))


@pytest.mark.parametrize(
    "cfg",
    [
        SynthConfig(out="-", images=150, image_size=64, max_objects=1),
        SynthConfig(out="-", images=60, image_size=128, classes=8, max_objects=4, seed=1),
        SynthConfig(out="-", images=60, image_size=64),
    ],
    ids=["64px-1-object", "128px-8-classes-4-objects", "64px-defaults"],
)
def test_boxes_are_inside_the_image_and_fit_the_drawn_shape(cfg):
    size, per_class, per_image = cfg.image_size, Counter(), Counter()
    for i in range(cfg.images):
        img, objects = synth.make_image(cfg, i, noise=False)
        # each object on its own: the image before it (limit=k) and right after it (limit=k + 1), later ones unpainted
        steps = [synth.make_image(cfg, i, noise=False, limit=k)[0] for k in range(len(objects) + 1)]
        assert (steps[-1] == img).all() and steps[0].tolist() == np.clip(
            synth._background(synth.image_rng(cfg, i), size), 0, 255
        ).astype(np.uint8).tolist()
        boxes = np.array([box for _, box in objects], float)
        covered = np.zeros((size, size), bool)
        for k, (name, (x0, y0, x1, y1)) in enumerate(objects):
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, (i, name, (x0, y0, x1, y1))
            per_class[name] += 1
            painted = (steps[k + 1] != steps[k]).any(axis=2)
            ys, xs = np.nonzero(painted)
            # the shape reaches each side of its box to within 1 px (anti-aliased edge pixels may round either way)
            drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert np.abs(np.subtract(drawn, (x0, y0, x1, y1))).max() <= 1, (i, name, drawn, (x0, y0, x1, y1))
            # later objects may cover part of it, never most of it: at least a quarter of its pixels stay visible
            visible = painted & (img == steps[k + 1]).all(axis=2)
            assert visible.sum() >= 0.25 * painted.sum(), (i, name, visible.sum(), painted.sum())
            covered[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        assert (img[~covered] == steps[0][~covered]).all(), f"image {i}: pixels changed outside every box"
        # overlaps are bounded: any two boxes (as written) have an IoU of at most MAX_IOU = 0.3
        overlap = iou_matrix(boxes, boxes)
        assert (overlap[~np.eye(len(boxes), dtype=bool)] <= 0.3).all(), (i, overlap)
        assert len(objects) == wanted_objects(cfg, i)  # every object asked for found a place
        per_image[len(objects)] += 1
    assert set(per_class) == set(synth.CLASS_NAMES[: cfg.classes])  # every class appears
    assert set(per_image) == set(range(1, cfg.max_objects + 1))  # every count from 1 to max_objects


def test_default_images_hold_1_to_6_objects_of_many_sizes_some_overlapping():
    cfg = SynthConfig(out="-", images=120, image_size=128)  # the defaults: the counts and sizes below are theirs
    per_image, sides, overlapping = Counter(), [], 0
    for i in range(cfg.images):
        _, objects = synth.make_image(cfg, i, noise=False)
        per_image[len(objects)] += 1
        sides += [max(x1 - x0, y1 - y0) / 128 for _, (x0, y0, x1, y1) in objects]
        boxes = np.array([box for _, box in objects], float)
        overlap = iou_matrix(boxes, boxes)[~np.eye(len(boxes), dtype=bool)]
        overlapping += bool((overlap > 0).any())
        assert (overlap <= 0.3).all()
    assert set(per_image) == set(range(1, 7))
    # uniform over 1..6: 20 images per count expected; binomial(120, 1/6) sd = sqrt(120 * 1/6 * 5/6) = 4.1, 3 sd
    assert all(8 <= n <= 32 for n in per_image.values()), per_image
    # the longer side spans 12-60% of the image (rounding to whole pixels: +-1 px), small ones included
    assert min(sides) >= 0.12 - 1 / 128 and max(sides) <= 0.60 + 1 / 128
    assert min(sides) < 0.14 and max(sides) > 0.5
    assert overlapping > 0  # partial overlaps do occur


def test_written_jpegs_are_the_checked_images_and_their_objects_stand_out(tmp_path):
    cfg = SynthConfig(out=str(tmp_path / "s"), images=30, image_size=64, max_objects=2)
    synth.write_synthetic(cfg)
    ds = discovery.discover(cfg.out)
    for i, ref in enumerate(ds.annotations):
        rec = voc.parse_voc(ds.read(ref.annotation))
        jpeg = np.asarray(Image.open(tmp_path / "s" / discovery.resolve_image(ds, ref, rec.filename)), np.float64)
        img, objects = synth.make_image(cfg, i)
        assert [(o.name, o.box) for o in rec.objects] == [(n, tuple(map(float, b))) for n, b in objects]
        # only JPEG's loss between them: it smooths part of the pixel noise (sigma <= 10: mean |noise| <= 8)
        assert np.abs(jpeg - img).mean() < 8
        background = np.clip(synth._background(synth.image_rng(cfg, i), cfg.image_size), 0, 255)
        diff = np.abs(jpeg - background).mean(axis=2)
        inside = np.zeros(diff.shape, bool)
        for o in rec.objects:
            x0, y0, x1, y1 = (int(v) for v in o.box)
            inside[y0:y1, x0:x1] = True
        # outside the boxes only noise (sigma <= 10) and JPEG loss; inside, the object's colour
        assert diff[inside].mean() > 3 * diff[~inside].mean() and diff[inside].mean() > 20, ref.annotation


def test_speed_an_image_costs_at_most_ten_noise_fills_of_its_size():
    """Synthesis stays cheap beside the pixels it makes: an image of 128 px costs at most 10x the CPU of filling a
    128 px RGB image with Gaussian noise in numpy. Both are timed on this thread (``thread_time``, OpenCV held to it):
    the test process's other threads (Ray's, after earlier tests) are not counted, and the machine's speed cancels
    out."""
    cfg = SynthConfig(out="-", images=100, image_size=128)
    rng = np.random.default_rng(0)
    start = time.thread_time()
    for _ in range(cfg.images):
        np.clip(rng.normal(128, 10, size=(128, 128, 3)), 0, 255).astype(np.uint8)
    fill = (time.thread_time() - start) / cfg.images
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # OpenCV's own pool (resize, blend) would escape this thread's clock
    try:
        start = time.thread_time()
        for i in range(cfg.images):
            synth.make_image(cfg, i)
        per_image = (time.thread_time() - start) / cfg.images
    finally:
        cv2.setNumThreads(threads)
    assert per_image < 10 * fill, f"{per_image * 1e3:.2f} ms of CPU per image, {fill * 1e3:.2f} ms per noise fill"


def test_cli_synth_writes_the_set_and_refuses_bad_arguments(tmp_path, capsys):
    from raydet.cli import main

    assert (
        main(
            [
                "synth",
                str(tmp_path / "s"),
                "--images",
                "5",
                "--image-size",
                "32",
                "--classes",
                "8",
                "--max-objects",
                "3",
                "--seed",
                "7",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "s" / "JPEGImages").glob("*.jpg"))) == 5
    assert "synth: 5 images (4 train, 1 test) of 32 px" in capsys.readouterr().out  # round(5 * 0.2) = 1 test
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "t"), "--classes", "9"])
    for bad, named in (("0.5", "'0.5'"), ("0.9,0.4", "0.9,0.4"), ("0,1", "0.0,1.0"), ("a,b", "'a,b'")):
        with pytest.raises(SystemExit):
            main(["synth", str(tmp_path / "t"), "--object-size", bad])
        assert named in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_object_size_sets_the_range_of_the_longer_side():
    cfg = SynthConfig(out="-", images=80, image_size=64, max_objects=1, object_size=(0.6, 0.9))
    sides = []
    for i in range(cfg.images):
        _, objects = synth.make_image(cfg, i, noise=False)
        sides += [max(x1 - x0, y1 - y0) / 64 for _, (x0, y0, x1, y1) in objects]
    assert len(sides) == 80  # one object per image, each placed
    assert min(sides) >= 0.6 - 1 / 64 and max(sides) <= 0.9 + 1 / 64  # whole pixels: +-1 px
    assert min(sides) < 0.65 and max(sides) > 0.85  # the range is used, not one end of it
