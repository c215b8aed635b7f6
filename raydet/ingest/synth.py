"""The built-in synthetic dataset: coloured shapes on textured, noisy backgrounds, written as a VOC devkit.

``write_synthetic(cfg)`` writes ``OUT/Annotations/NNNNNN.xml`` (as labelImg writes them, integer pixel
xyxy boxes), ``OUT/JPEGImages/NNNNNN.jpg`` (``cfg.image_size`` square, RGB) and
``OUT/ImageSets/Main/{train,test}.txt``, plus ``OUT/synth.json`` (the config and counts, which also marks
the folder as ours so a rewrite may clear it).

What makes it learnable, yet not trivial:
- the class is the *shape* (circle, square, triangle, cross, star, diamond, ring, hourglass: the first
  ``cfg.classes``); colours are drawn independently of the class, so colour says nothing about it;
- 1 to ``cfg.max_objects`` objects per image (6 by default; the count drawn uniformly), each of a class and
  a size of its own: the longer box side spans 12-60 % of the image side by default (``--object-size`` sets
  the range; the more objects, the smaller the largest allowed, so they fit), with aspect 2:3..3:2 and a
  rotation that never turns one class into another (squares and diamonds only tilt by up to 15 degrees,
  triangles 40);
- backgrounds are a two-colour gradient + smooth blotches + half-transparent clutter lines + per-pixel
  noise, and the object's colour keeps a minimum RGB distance from what lies under it (the background's mean
  and every earlier object it overlaps), so it stays visible at 64 px. (A first version of the one-object
  set with 15 % objects, opaque lines and any triangle orientation was too hard for `raydet run`'s
  15-epoch budget.)
- objects may overlap partly, a later one painted over an earlier one: any two boxes have an IoU of at most
  ``MAX_IOU``, and boxes painted later cover at most ``MAX_COVERED`` of an earlier box's area, so every
  object stays visible.
Boxes are each shape's own geometric box (not what remains visible), computed from its polygons, so they are
exact; edges are anti-aliased by drawing the shape's mask at 4x and averaging it down.

Deterministic: image ``i`` draws from its own generator seeded by ``(cfg.seed, i)``, and the split from
another, so the same seed gives byte-identical files (for the same Pillow version).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from raydet.config import SynthConfig
from raydet.detector import boxes as B
from raydet.errors import UserError, UserNotADirectoryError

SUPERSAMPLE = 4  # the mask is drawn at 4x and averaged down: anti-aliased edges
MIN_ASPECT, MAX_ASPECT = 2 / 3, 3 / 2
MIN_CONTRAST = 120.0  # RGB distance between object colour and what lies under it (max is 441)
MAX_IOU = 0.3  # any two boxes of an image overlap at most this much (pixel xyxy, as written)
MAX_COVERED = 0.5  # at most this fraction of a box's area lies under boxes painted after it
JPEG_QUALITY = 92  # with 4:4:4 chroma (subsampling=0): colour edges stay sharp at 64 px
MARKER = "synth.json"
PROGRESS_EVERY = 5000


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer, inner_ = _regular(points), _regular(points, inner, -math.pi / 2 + math.pi / points)
    return np.stack([outer, inner_], axis=1).reshape(-1, 2)


@dataclass(frozen=True)
class Shape:
    """A class: polygons in unit coordinates ([-1, 1], y down), filled in order; ``hole`` ones are cut out."""

    name: str
    polygons: tuple[np.ndarray, ...]
    max_rotation: float  # degrees either way; 180 = any orientation
    hole: tuple[bool, ...] = ()


_A = 0.34  # half-width of the cross's arms: thick enough to read at 10 pixels
SHAPES: tuple[Shape, ...] = (
    Shape("circle", (_regular(48),), 180),
    Shape("square", (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),), 15),
    Shape("triangle", (np.array([[0, -1], [1, 0.75], [-1, 0.75]], float),), 40),
    Shape(
        "cross",
        (
            np.array(
                [
                    [-_A, -1],
                    [_A, -1],
                    [_A, -_A],
                    [1, -_A],
                    [1, _A],
                    [_A, _A],
                    [_A, 1],
                    [-_A, 1],
                    [-_A, _A],
                    [-1, _A],
                    [-1, -_A],
                    [-_A, -_A],
                ],
                float,
            ),
        ),
        15,
    ),
    Shape("star", (_star(),), 180),
    Shape("diamond", (np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float),), 15),
    Shape("ring", (_regular(48), _regular(48, 0.55)), 180, hole=(False, True)),
    Shape("hourglass", (np.array([[-1, -1], [1, -1], [0.15, 0], [1, 1], [-1, 1], [-0.15, 0]], float),), 15),
)
CLASS_NAMES = tuple(s.name for s in SHAPES)


# ---------------------------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 RGB 0..255: two-colour gradient + smooth blotches + thin clutter lines."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    cells = int(rng.integers(3, 9))  # blotch scale: a few cells across
    # Gradient and blotches are both smooth, so build them on a cells x cells grid and upsample once
    # (a linear ramp survives the cubic upsampling): far cheaper than full-size arithmetic.
    u = np.linspace(0.0, 1.0, cells)
    t = np.cos(theta) * u[None, :] + np.sin(theta) * u[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grid = c0 + t[..., None] * (c1 - c0) + rng.standard_normal((cells, cells, 3)) * rng.uniform(6, 20)
    img = cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    # Clutter: a few thin lines, half-transparent so they read as texture, not as objects.
    lines = img.copy()
    for _ in range(int(rng.integers(1, 5))):
        (xa, ya), (xb, yb) = rng.uniform(0, size, (2, 2)) * 16  # 4 fractional bits (shift=4)
        colour = tuple(float(v) for v in rng.integers(0, 256, 3))
        cv2.line(
            lines,
            (int(xa), int(ya)),
            (int(xb), int(yb)),
            colour,
            thickness=int(rng.integers(1, max(1, size // 128) + 1)),
            lineType=cv2.LINE_AA,
            shift=4,
        )
    img = cv2.addWeighted(img, 0.5, lines, 0.5, 0.0)
    return img


def _geometry(shape: Shape, rng: np.random.Generator, size: int, min_side: float, max_side: float) -> list[np.ndarray]:
    """The shape's polygons, scaled, stretched and rotated, relative to their box's top-left corner (pixels)."""
    aspect = math.exp(rng.uniform(math.log(MIN_ASPECT), math.log(MAX_ASPECT)))
    angle = math.radians(rng.uniform(-shape.max_rotation, shape.max_rotation))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polys = [(p * [math.sqrt(aspect), 1 / math.sqrt(aspect)]) @ rot.T for p in shape.polygons]
    pts = np.concatenate(polys)
    lo, extent = pts.min(axis=0), pts.max(axis=0) - pts.min(axis=0)
    side = rng.uniform(min_side, max_side) * size  # the longer box side, pixels
    scale = side / extent.max()
    return [(p - lo) * scale for p in polys]


@dataclass
class _Placed:
    """An object already in the image: its pixel xyxy int box, colour, and which pixels of its box later boxes cover."""

    box: tuple[int, int, int, int]
    colour: np.ndarray
    covered: np.ndarray  # (y1 - y0, x1 - x0) bool


def _place(rng: np.random.Generator, polys: list[np.ndarray], size: int, taken: list[_Placed], tries: int = 30):
    """Shift ``polys`` to a random spot inside the image whose box, rounded to pixel xyxy ints, has an IoU of at
    most ``MAX_IOU`` with each box in ``taken`` and leaves each of them at most ``MAX_COVERED`` covered ->
    (polygons, float box, int box), or None when no such spot was found."""
    extent = np.concatenate(polys).max(axis=0)
    for _ in range(tries):
        offset = rng.uniform(0, size - extent)  # keeps the whole shape inside: never truncated
        box = np.concatenate([offset, offset + extent])
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        pixel = (max(x0, 0), max(y0, 0), min(x1, size), min(y1, size))
        if _fits(pixel, taken):
            return [p + offset for p in polys], box, pixel
    return None


def _fits(box: tuple[int, int, int, int], taken: list[_Placed]) -> bool:
    """Whether pixel xyxy ``box`` may be painted over the objects ``taken`` (``MAX_IOU``, ``MAX_COVERED``)."""
    if not taken:
        return True
    if B.iou_matrix(np.array([box], float), np.array([t.box for t in taken], float)).max() > MAX_IOU:
        return False
    for t in taken:
        covered = _cover(t, box)
        if covered is not None and covered.mean() > MAX_COVERED:
            return False
    return True


def _cover(placed: _Placed, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """``placed.covered`` with pixel xyxy ``box`` added (a new array), or None when ``box`` misses it."""
    x0, y0 = max(box[0], placed.box[0]), max(box[1], placed.box[1])
    x1, y1 = min(box[2], placed.box[2]), min(box[3], placed.box[3])
    if x1 <= x0 or y1 <= y0:
        return None
    covered = placed.covered.copy()
    covered[y0 - placed.box[1] : y1 - placed.box[1], x0 - placed.box[0] : x1 - placed.box[0]] = True
    return covered


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, avoid: list[np.ndarray]) -> np.ndarray:
    """A random RGB colour at least MIN_CONTRAST from the mean of ``under`` and from every colour in ``avoid``
    (or, of 20 tries, the one whose nearest of these is farthest)."""
    targets = np.array([under.reshape(-1, 3).mean(axis=0), *avoid])
    candidates = rng.uniform(0, 255, (20, 3))
    distance = np.linalg.norm(candidates[:, None] - targets[None], axis=2).min(axis=1)
    ok = np.flatnonzero(distance >= MIN_CONTRAST)
    return candidates[ok[0] if ok.size else int(distance.argmax())]


def _paint(
    img: np.ndarray,
    rng: np.random.Generator,
    shape: Shape,
    polys: list[np.ndarray],
    box: np.ndarray,
    avoid: list[np.ndarray],
) -> np.ndarray:
    """Composite the shape into ``img`` (in place) inside its float pixel xyxy ``box``, with anti-aliased edges
    and light shading, in a colour that stands out from what is under it and from ``avoid`` -> that colour."""
    x0, y0 = int(math.floor(box[0])), int(math.floor(box[1]))
    x1, y1 = min(int(math.ceil(box[2])) + 1, img.shape[1]), min(int(math.ceil(box[3])) + 1, img.shape[0])
    w, h = x1 - x0, y1 - y0
    mask = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(mask)
    for poly, hole in zip(polys, shape.hole or (False,) * len(polys), strict=True):
        # -0.5: PIL fills the pixels whose centres the outline touches, both ends included
        pts = (poly - [x0, y0]) * SUPERSAMPLE - 0.5
        draw.polygon([tuple(p) for p in pts], fill=0 if hole else 255)
    alpha = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0
    region = img[y0:y1, x0:x1]
    colour = _contrasting_colour(rng, region, avoid)
    # a gentle linear shade across the object: flat fills would be too easy a cue
    shade = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-20, 20) + np.linspace(
        -1, 1, h, dtype=np.float32
    )[:, None, None] * rng.uniform(-20, 20)
    region[...] = region * (1 - alpha) + np.clip(colour + shade, 0, 255) * alpha
    return colour


def image_rng(cfg: SynthConfig, index: int) -> np.random.Generator:
    """Image ``index``'s own generator: images do not depend on each other (or on the order they are made)."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, index)))


def make_image(
    cfg: SynthConfig, index: int, *, noise: bool = True, limit: int | None = None
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """Image ``index`` of the dataset: (size, size, 3) uint8 RGB and its objects as (class, pixel xyxy ints), in
    the order they were painted (a later one may cover part of an earlier one).

    ``noise=False`` leaves out the final per-pixel noise (all else identical): tests compare that image with
    ``_background(image_rng(cfg, index), size)`` to check every box against the pixels that changed.
    ``limit``: stop after that many objects; with ``noise=False`` the first ones are painted exactly as in the
    whole image, so tests can see each object before later ones cover it.
    """
    rng = image_rng(cfg, index)
    size = cfg.image_size
    img = _background(rng, size)
    wanted = int(rng.integers(1, cfg.max_objects + 1))
    # more objects must share the image: shrink the largest allowed size so they still fit side by side
    min_side, max_side = cfg.object_size
    max_side = max(min(min_side + 0.05, max_side), max_side / math.sqrt(wanted))
    taken: list[_Placed] = []
    objects = []
    for _ in range(wanted):
        if limit is not None and len(objects) >= limit:
            break
        shape = SHAPES[int(rng.integers(cfg.classes))]
        placed = _place(rng, _geometry(shape, rng, size, min_side, max_side), size, taken)
        if placed is None:
            continue  # no free spot: fewer objects in this image
        polys, box, pixel = placed
        under = [t.colour for t in taken if _cover(t, pixel) is not None]
        colour = _paint(img, rng, shape, polys, box, under)
        for t in taken:
            covered = _cover(t, pixel)
            if covered is not None:
                t.covered = covered
        taken.append(_Placed(pixel, colour, np.zeros((pixel[3] - pixel[1], pixel[2] - pixel[0]), bool)))
        objects.append((shape.name, pixel))
    if noise:
        img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2, 8)
    return np.clip(img, 0, 255).astype(np.uint8), objects


# ---------------------------------------------------------------------------------------------- writing


def voc_xml(filename: str, size: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """An annotation laid out as labelImg writes it (tabs, integer pixel xyxy boxes)."""
    parts = [
        f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<source>\n\t\t<database>raydet synthetic</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n"
    ]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
            f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear an earlier synthetic set there, refuse to write into any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise UserNotADirectoryError(f"synth output is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"synth output {out} is not empty and holds no {MARKER}: refusing to write into it")
        for sub in ("Annotations", "JPEGImages", "ImageSets"):
            shutil.rmtree(out / sub, ignore_errors=True)  # stale files of a larger earlier set would be discovered
        (out / MARKER).unlink()
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        (out / sub).mkdir(parents=True, exist_ok=True)


def split_ids(cfg: SynthConfig) -> tuple[list[str], list[str]]:
    """(train ids, test ids), sorted; ``round(images * test_fraction)`` test images chosen by the seed."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    n_test = int(round(cfg.images * cfg.test_fraction))
    is_test = np.zeros(cfg.images, bool)
    is_test[rng.permutation(cfg.images)[:n_test]] = True
    ids = [image_id(i) for i in range(cfg.images)]
    return [x for x, t in zip(ids, is_test, strict=True) if not t], [x for x, t in zip(ids, is_test, strict=True) if t]


def image_id(index: int) -> str:
    return f"{index + 1:06d}"


def write_synthetic(cfg: SynthConfig) -> dict:
    """Write the dataset described by ``cfg`` to ``cfg.out``; return {out, images, objects, classes, train, test}."""
    out = Path(cfg.out)
    _prepare_out(out)
    objects = 0
    counts = dict.fromkeys(CLASS_NAMES[: cfg.classes], 0)
    for i in range(cfg.images):
        img, objs = make_image(cfg, i)
        stem = image_id(i)
        Image.fromarray(img).save(out / "JPEGImages" / f"{stem}.jpg", quality=JPEG_QUALITY, subsampling=0)
        (out / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", cfg.image_size, objs), encoding="utf-8")
        objects += len(objs)
        for name, _ in objs:
            counts[name] += 1
        if (i + 1) % PROGRESS_EVERY == 0 and i + 1 < cfg.images:
            print(f"synth: {i + 1}/{cfg.images} images", flush=True)  # ~5 s apart: large sets show progress
    train, test = split_ids(cfg)
    main = out / "ImageSets" / "Main"
    (main / "train.txt").write_text("".join(f"{x}\n" for x in train))
    (main / "test.txt").write_text("".join(f"{x}\n" for x in test))
    summary = {
        "out": str(out),
        "images": cfg.images,
        "objects": objects,
        "classes": list(counts),
        "objects_per_class": counts,
        "train": len(train),
        "test": len(test),
    }
    # no paths in the marker: the same seed gives the same bytes wherever the set is written
    marker = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
        **{k: v for k, v in summary.items() if k != "out"},
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    print(
        f"synth: {cfg.images} images ({len(train)} train, {len(test)} test) of {cfg.image_size} px, {objects} objects "
        f"of {cfg.classes} classes ({', '.join(counts)}) -> {out}"
    )
    return summary
