"""``RUN/eval/report.html``: the evaluation as one self-contained web page, assembled from a RUN's files.

In (docs/FORMATS.md): ``RUN/eval/report.json``, the COCO files it names (``coco_dir``, default
``RUN/eval/coco``), ``RUN/history.jsonl`` when there is one, and the PREP test split (``report.json``'s
``data``) for the gallery's pixels. Out: ``RUN/eval/report.html``, every plot and picture embedded as a
``data:`` URI and no script, so it opens anywhere without a network and can be mailed as one file.

The page, top to bottom: the headline table (every model side by side, each against float), training curves,
per-class AP50 and recall, AP by object size, then per model its precision-recall curves at IoU 0.5, its
confusion matrix and a gallery of its worst test images. Numbers come from raydet.report.analysis, plots from
raydet.report.plots, drawings from raydet.report.gallery; this module only reads files and writes HTML.
``raydet evaluate`` writes it after each evaluation; ``raydet report RUN`` writes it again from the files.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raydet.cluster.sizes import format_size
from raydet.errors import UserFileNotFoundError
from raydet.export.run import Run
from raydet.ingest.prep import Prep
from raydet.report import analysis, gallery, plots
from raydet.report.browser import screenshot

REPORT_FILE = "report.html"
GALLERY_IMAGES = 12  # worst test images shown per model
SCREENSHOT_SIZE = (1280, 1800)  # `raydet report --screenshot`: the top of the page, tables and first plots
SCREENSHOT_MAX_BYTES = 300_000  # small enough to commit beside a README


@dataclass(frozen=True)
class ModelView:
    """One model's part of the page: ``metrics`` (report.json's entry), PNG plots, ``sizes``
    (analysis.ap_by_size) and ``gallery`` [(caption, JPEG bytes)], worst image first."""

    name: str
    metrics: dict
    pr_png: bytes
    confusion_png: bytes
    sizes: dict
    gallery: list


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise UserFileNotFoundError(f"{path} not found ({what})")
    return json.loads(path.read_text())


def build_report(
    run: str | os.PathLike, gallery_images: int = GALLERY_IMAGES, eval_dir: str | os.PathLike | None = None
) -> Path:
    """Write ``RUN/eval/report.html`` from the RUN's files (module docstring); returns its path. ``eval_dir``:
    the folder holding report.json (default RUN/eval; evaluate passes its staging folder); a relative
    ``coco_dir`` in report.json is relative to it. FileNotFoundError names a missing report.json or COCO file."""
    run = Path(run)
    eval_dir = Path(eval_dir) if eval_dir is not None else Run(run).local(Run.EVAL)
    report = _read_json(eval_dir / "report.json", "written by `raydet evaluate`")
    coco_dir = eval_dir / (report.get("coco_dir") or "coco")  # an absolute coco_dir replaces eval_dir
    gt = _read_json(coco_dir / "ground_truth.json", "the COCO ground truth `raydet evaluate` writes")
    classes = list(report["classes"])
    found = {
        name: analyse(gt, _read_json(coco_dir / f"detections_{name}.json", f"{name}'s COCO detections"), classes)
        for name in report["models"]
    }
    drawings, note = _gallery(found, classes, report, gallery_images)
    views = [
        ModelView(name, report["models"][name], *_model_plots(name, a, classes), a["sizes"], drawings.get(name, []))
        for name, a in found.items()
    ]
    page = render_page(run, report, views, plots.training_curves(Run(run).read_history()), note)
    out = eval_dir / REPORT_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a page
    return out


def analyse(gt: dict, detections: list, classes: list[str]) -> dict:
    """One model's COCO files -> ``images`` (analysis.ImageResult list), ``stats`` (MatchStats), ``sizes``,
    ``confusion`` ((C + 1, C + 1)) and ``ranked`` (analysis.ImageScore list, worst first)."""
    images = analysis.from_coco(gt, detections)
    stats = analysis.match_all(images, len(classes))
    return {
        "images": images,
        "stats": stats,
        "sizes": analysis.ap_by_size(images, len(classes)),
        "confusion": analysis.confusion_matrix(images, len(classes)),
        "ranked": analysis.image_scores(images, stats),
    }


def _model_plots(name: str, a: dict, classes: list[str]) -> tuple[bytes, bytes]:
    """One model's :func:`analyse` results -> (precision-recall PNG, confusion-matrix PNG)."""
    curves = {c: analysis.pr_curve(a["stats"], i) for i, c in enumerate(classes)}
    ap = {c: float(np.mean(p)) for c, (_, p) in curves.items()}  # the 101-point mean: report.json's AP50
    points = {c: analysis.operating_point(a["stats"], i) for i, c in enumerate(classes)}
    pr = plots.pr_curves(curves, ap, points, title=f"{name}: precision-recall, IoU 0.5")
    cm = plots.confusion(
        a["confusion"],
        classes + ["background"],
        title=f"{name}: IoU {analysis.IMAGE_IOU}, score >= {analysis.IMAGE_SCORE}",
    )
    return pr, cm


def _gallery(found: dict, classes: list[str], report: dict, count: int) -> tuple[dict, str]:
    """{model: [(caption, JPEG)]} of each model's ``count`` worst images, and a note ('' when all went well)."""

    prep = report.get("data") or ""  # a path or a URI (raydet.cluster.storage), never made a Path: s3:// would lose a /
    wanted = {}
    for name, a in found.items():
        by_id = {im.image_id: im for im in a["images"]}
        wanted[name] = [(s, by_id[s.image_id]) for s in a["ranked"][:count]]
    try:
        rows = gallery.rows_by_file(
            prep, report.get("split", "test"), {im.file for p in wanted.values() for _, im in p}
        )
    except (OSError, ValueError) as exc:  # PREP moved or deleted: the rest of the page still stands
        return {}, f"no gallery: the test images could not be read from {prep} ({type(exc).__name__}: {exc})"
    try:
        source = Prep(prep).read_manifest(splits=()).get("source")
    except (OSError, ValueError):  # no manifest: the PREP pixels are drawn
        source = None
    threshold = float(report.get("draw_score_threshold", analysis.IMAGE_SCORE))
    try:
        return {name: _drawn(pairs, rows, source, classes, threshold) for name, pairs in wanted.items()}, ""
    except Exception as exc:  # pictures; the figures above them stand
        return {}, f"no gallery: drawing failed ({type(exc).__name__}: {exc})"


def _drawn(pairs: list, rows: dict, source: str | None, classes: list[str], threshold: float) -> list:
    """[(caption, JPEG bytes)] for each (ImageScore, ImageResult) pair whose image is in ``rows``."""

    out = []
    for s, im in pairs:
        if im.file in rows:
            drawn = gallery.draw_result(gallery.original_image(source, rows[im.file]), im, classes, threshold)
            out.append((f"{im.file}: F1 {s.f1:.2f} ({s.tp} found, {s.fp} false, {s.fn} missed)", gallery.jpeg(drawn)))
    return out


# ---------------------------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1240px; color: #222; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 16px; } p.meta, p.note, figcaption { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; }
.grid figure { margin: 0; } .grid img { width: 100%; border: 1px solid #ddd; }
img.plot { max-width: 100%; }
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "plot") -> str:
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img class="{cls}" alt="{_esc(alt)}" src="{uri}">'


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escape text with _esc first)."""
    top = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{top}</tr>{body}</table>"


def headline_table(models: dict) -> str:
    """Every model side by side (report.json's figures); each AP column also against the float model."""
    base = models.get("float")
    head = ["model", "COCO mAP", "AP50", "AP75", "VOC AP50", "images/s", "p50 ms", "p95 ms", "size"]

    def ap(m, key):
        text = _num(m.get(key))
        if base is not None and m is not base and m.get(key) is not None and base.get(key) is not None:
            text += f" ({m[key] - base[key]:+.3f})".replace("-0.000", "+0.000")
        return text

    rows = [
        [
            _esc(name),
            ap(m, "coco_map"),
            ap(m, "coco_map_50"),
            ap(m, "coco_map_75"),
            ap(m, "voc_map_50"),
            _num(m.get("images_per_s"), ".0f"),
            _num(m.get("latency_ms_p50"), ".2f"),
            _num(m.get("latency_ms_p95"), ".2f"),
            _esc(format_size(m.get("size_bytes"))),
        ]
        for name, m in models.items()
    ]
    return _table(head, rows)


def class_table(models: dict, classes: list[str]) -> str:
    """Per class: objects, then each model's AP50 and recall at IoU 0.5 (report.json's per_class)."""
    head = ["class", "objects"] + [f"{_esc(n)} {w}" for n in models for w in ("AP50", "recall")]
    rows = []
    for c, name in enumerate(classes):
        first = next(iter(models.values()))["per_class"][c]
        cells = [_esc(name), str(first["ground_truth"])]
        for m in models.values():
            cells += [_num(m["per_class"][c]["ap50"]), _num(m["per_class"][c]["recall50"])]
        rows.append(cells)
    return _table(head, rows)


def size_table(views: list[ModelView]) -> str:
    """Per object size: its objects, then each model's COCO mAP@[.5:.95] and AP50 (analysis.ap_by_size)."""
    head = ["size (area, px²)", "objects"] + [f"{_esc(v.name)} {w}" for v in views for w in ("mAP", "AP50")]
    bounds = {"small": "small (< 32²)", "medium": "medium (32²–96²)", "large": "large (> 96²)"}
    rows = []
    for size, label in bounds.items():
        cells = [_esc(label), str(views[0].sizes[size]["objects"]) if views else "0"]
        for v in views:
            cells += [_num(v.sizes[size]["map"]), _num(v.sizes[size]["ap50"])]
        rows.append(cells)
    return _table(head, rows)


def model_section(view: ModelView) -> str:
    """A model's PR curves, confusion matrix and gallery."""
    figures = "".join(
        f"<figure>{_img(jpg, caption, 'image/jpeg', 'photo')}<figcaption>{_esc(caption)}</figcaption></figure>"
        for caption, jpg in view.gallery
    )
    gallery = f'<div class="grid">{figures}</div>' if figures else '<p class="note">no images to show</p>'
    return (
        f'<h2>{_esc(view.name)}</h2><div class="row">{_img(view.pr_png, view.name + " precision-recall")}'
        f"{_img(view.confusion_png, view.name + ' confusion matrix')}</div>"
        f"<h3>Worst test images first</h3>{gallery}"
    )


def render_page(run: Path, report: dict, views: list[ModelView], curves_png: bytes | None, note: str = "") -> str:
    """The whole page as a string (module docstring)."""
    models, classes = report["models"], list(report["classes"])
    images = next(iter(models.values()))["images"] if models else 0
    meta = (
        f"run <code>{_esc(run)}</code>, {_esc(report.get('split', 'test'))} split of "
        f"<code>{_esc(report.get('data', '?'))}</code>: {images} images, classes {_esc(', '.join(classes))}; "
        f"written {time.strftime('%Y-%m-%d %H:%M')}"
    )
    curves = _img(curves_png, "training curves") if curves_png else f'<p class="note">no {Run.HISTORY}</p>'
    parts = [
        f'<h1>raydet evaluation</h1><p class="meta">{meta}</p>',
        "<h2>Models</h2>",
        headline_table(models),
        "<h2>Training</h2>",
        curves,
        "<h2>Per class (IoU 0.5)</h2>",
        class_table(models, classes),
        "<h2>AP by object size</h2>",
        size_table(views),
    ]
    parts += [f'<p class="note">{_esc(note)}</p>'] if note else []
    parts += [model_section(v) for v in views] + [definitions(report)]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>raydet report: {_esc(run.name)}'
        f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def definitions(report: dict) -> str:
    """What each figure means, as the page's last section."""
    draw = report.get("draw_score_threshold", analysis.IMAGE_SCORE)
    items = [
        "COCO mAP / AP50 / AP75: pycocotools' 101-point AP at IoU .50:.95 / .50 / .75, every object counted; "
        "VOC AP50: all-point AP at IoU > 0.5, difficult objects ignored. In brackets: the difference to float.",
        "images/s: from the first batch's start to the last batch's end inside the actors (model loading "
        "excluded); latency: model time per image.",
        "Precision-recall: per class at IoU 0.5, pycocotools' interpolated precision at 101 recall points, so "
        "each curve's mean (the area under it, as COCO samples it) is the class's AP50; the dot is the class at "
        f"score >= {analysis.IMAGE_SCORE}.",
        f"Confusion matrix: detections scoring >= {analysis.IMAGE_SCORE} paired with objects of any class by IoU "
        f"(highest first, >= {analysis.IMAGE_IOU}, each used once); rows are the true class, columns the "
        "predicted one; the background row counts detections on no object, the background column objects "
        "nobody found. Colours: each cell's share of its row.",
        "AP by size: COCO's ranges on the object's area in original pixels (small < 32², medium 32²–96², large "
        "> 96²); objects of other sizes are ignored, as pycocotools does.",
        f"Gallery: per image, F1 = 2 TP / (2 TP + FP + FN) at IoU {analysis.IMAGE_IOU} of the detections "
        f"scoring >= {analysis.IMAGE_SCORE} (class must match); lowest first. Green: ground truth; red: "
        f"detections scoring >= {draw}.",
    ]
    return "<h2>Definitions</h2><ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"


def report(cfg) -> Path:
    """``raydet report``: write ``cfg.run``'s report.html again (``cfg``: a ReportConfig) and print its path;
    with ``cfg.screenshot`` also save a headless-Chromium screenshot of it there."""
    path = build_report(cfg.run)
    print(f"report: {path}", flush=True)
    if cfg.screenshot:
        width, height = SCREENSHOT_SIZE
        shot = screenshot(path, cfg.screenshot, width=width, height=height, max_bytes=SCREENSHOT_MAX_BYTES)
        print(f"screenshot: {shot} (the page's top {width} x {height} px)", flush=True)
    return path
