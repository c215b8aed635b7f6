"""report.html from a RUN built by hand (no Ray, no model: tests/handset.py's scenes and the detections its model
would make, finished by raydet.evaluate.pool's own summarize / write_coco / write_report), rendered in headless
Chromium; `raydet report` writes it again from the files."""

from __future__ import annotations

import html
import json
import re

import handset as H
import numpy as np
import pytest

from raydet.cli import main
from raydet.evaluate.outputs import ImageDetections, ModelResult, write_coco, write_report
from raydet.evaluate.pool import summarize
from raydet.report import analysis, browser
from raydet.report.page import REPORT_FILE, build_report

WIDTH, HEIGHT = 64, 48  # original size of every image
A, B = H.Obj(1, 1, 0, 5, 1), H.Obj(5, 2, 1, 4, 2)  # image 0: red 0.9975, blue 0.9734, both found
C = H.Obj(2, 5, 0, 3, 2)  # image 1: red 0.7685 found; a blue object F nobody finds
F_BOX = [0.6, 0.1, 0.9, 0.4]
E = H.Obj(4, 4, 1, 5, 1)  # image 2: a blue detection (0.9975) on no object
SCENES = [
    ("img_0.png", [A, B], [(H.box(A), 0), (H.box(B), 1)]),
    ("img_1.png", [C], [(H.box(C), 0), (F_BOX, 1)]),
    ("img_2.png", [E], []),
]
FOUND = {"float": [[A, B], [C], [E]], "int8": [[A, B], [], [E]]}  # int8 misses C
# By hand, COCO AP at IoU 0.5 (every box exact):
# red, float: A, C true positives of 2 objects -> AP 1; int8: A only, recall 1/2 at precision 1 -> the 101 recall
#   points 0 .. 0.50 (51) read 1 -> 51/101.
# blue, both: E 0.9975 false, B 0.9734 true, 2 objects (B, F): precision 1/2 at recall 1/2 -> 51 points read 1/2
#   -> 25.5/101.
AP50 = {"float": {"red": 1.0, "blue": 25.5 / 101}, "int8": {"red": 51 / 101, "blue": 25.5 / 101}}
HISTORY = [
    {
        "epoch": e,
        "epochs": 3,
        "loss": 3.0 / e,
        "heatmap_loss": 2.0 / e,
        "box_loss": 1.0 / e,
        "val_loss": 3.5 / e,
        "val_ap50": 0.3 * e,
        "val_map": 0.1 * e,
        "lr": 1e-3 / e,
        "seconds": 1.0,
        "end_time": 0.0,
    }
    for e in (1, 2, 3)
]


def _gt_rows():
    rows = []
    for file, objects, truth in SCENES:
        boxes, labels = np.zeros((2, 4), np.float32), np.full(2, -1, np.int32)
        for k, (box, label) in enumerate(truth):
            boxes[k], labels[k] = box, label
        rows.append(
            {
                "file": file,
                "image": H.paint(objects),
                "boxes": boxes,
                "labels": labels,
                "difficult": np.zeros(2, np.uint8),
                "num_objects": len(truth),
                "width": WIDTH,
                "height": HEIGHT,
            }
        )
    return rows


def _result(name: str, rows: list[dict], classes: list[str] = H.CLASSES) -> ModelResult:
    """What evaluate's actors would return for the hand-set model that finds FOUND[name], summed as evaluate does
    (``classes``: their names; labels 0 and 1 are the hand-set model's red and blue)."""
    from raydet.detector.boxes import denormalize_xyxy
    from raydet.detector.decode import to_pixels
    from raydet.detector.metrics import MatchStats, match_image

    images, matches = [], []
    for i, (row, found) in enumerate(zip(rows, FOUND[name], strict=True)):
        boxes, labels, scores = H.expected(found)
        image = ImageDetections(
            file=row["file"], image_id=i + 1, boxes=to_pixels(boxes, WIDTH, HEIGHT), labels=labels, scores=scores
        )
        n = row["num_objects"]
        matches.append(
            match_image(
                denormalize_xyxy(row["boxes"][:n], WIDTH, HEIGHT),
                row["labels"][:n],
                image.boxes,
                image.labels,
                image.scores,
                len(classes),
                image_id=image.image_id,
            )
        )
        images.append(image)
    part = {
        "match": MatchStats.concat(matches),
        "images": images,
        "latency_s": np.array([0.002, 0.004, 0.003]),
        "t_start": 10.0,
        "t_end": 10.5,
        "pid": 1,
    }
    return ModelResult(name=name, report=summarize([part], classes, 1000 if name == "int8" else 4000), images=images)


def _write_run(root, classes: list[str], files: list[str] | None = None, prep_name: str = "prep"):
    """RUN/eval/{report.json, report.md, coco/}, RUN/history.jsonl and the PREP test split they name, under
    ``root``, for the hand-set scenes with classes named ``classes`` (and files named ``files``)."""
    from raydet.ingest.shards import write_shard

    rows = _gt_rows()
    for row, file in zip(rows, files or [], strict=False):
        row["file"] = file
    prep = root / prep_name
    (prep / "test").mkdir(parents=True)
    write_shard(str(prep / "test" / "part-00000.parquet"), rows)
    (prep / "manifest.json").write_text(json.dumps({"classes": classes, "image_size": H.SIZE}))
    run = root / "run"
    results = {name: _result(name, rows, classes) for name in FOUND}
    write_coco(run / "eval" / "coco", rows, classes, results)
    write_report(
        run / "eval",
        {
            "models": {n: r.report for n, r in results.items()},
            "split": "test",
            "data": str(prep),
            "classes": classes,
            "actors": 1,
            "threads": 1,
            "batch_size": 3,
            "top_k": 100,
            "nms_iou": 0.7,
            "score_threshold": 0.01,
            "draw_score_threshold": 0.3,
            "coco_dir": str(run / "eval" / "coco"),
        },
        show_table=False,
    )
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY))
    return run


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory):
    """RUN/eval/{report.json, report.md, coco/}, RUN/history.jsonl and the PREP test split they name."""
    return _write_run(tmp_path_factory.mktemp("report"), H.CLASSES)


def test_the_pr_curve_area_is_report_jsons_ap(hand_run):
    report = json.loads((hand_run / "eval" / "report.json").read_text())
    gt = json.loads((hand_run / "eval" / "coco" / "ground_truth.json").read_text())
    for name in FOUND:
        dets = json.loads((hand_run / "eval" / "coco" / f"detections_{name}.json").read_text())
        stats = analysis.match_all(analysis.from_coco(gt, dets), 2)
        for label, cls in enumerate(H.CLASSES):
            _, precision = analysis.pr_curve(stats, label)
            assert report["models"][name]["per_class"][label]["ap50"] == pytest.approx(AP50[name][cls], abs=1e-12)
            assert precision.mean() == pytest.approx(AP50[name][cls], abs=1e-12), (name, cls)


def _cells(page: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    row = re.search(rf"<tr><td>{re.escape(first)}</td>(.*?)</tr>", page).group(1)
    return [first] + re.findall(r"<td>(.*?)</td>", row)


def test_page_holds_every_table_plot_and_the_worst_images_first(hand_run):
    page = build_report(hand_run).read_text()
    # headline: float's mAP50 = (1 + 25.5/101) / 2 = 0.626; int8 (51/101 + 25.5/101) / 2 = 0.379, -0.248 vs float
    assert _cells(page, "float")[2] == "0.626" and _cells(page, "int8")[2] == "0.379 (-0.248)"
    # 3 images / 0.5 s; p50 and p95 of 2, 4, 3 ms: 3 and 3 + 0.9 * (4 - 3) (numpy's linear percentile)
    assert _cells(page, "int8")[5:9] == ["6", "3.00", "3.90", "1.0 kB"]
    # per class: objects, then AP50 and recall per model; blue 25.5/101 = 0.252, recall 1/2
    assert _cells(page, "blue") == ["blue", "2", "0.252", "0.500", "0.252", "0.500"]
    # by size: image area 64 x 48; A is 0.2 x 0.2 of it: 12.8 x 9.6 = 123 px² (small); B, C and F are >= 0.3 of
    # the side: 0.4 x 0.4 -> 25.6 x 19.2 = 492 (small), F 0.3 x 0.3 -> 19.2 x 14.4 = 276 (small): all 4 small
    assert _cells(page, "small (&lt; 32²)")[1] == "4" and _cells(page, "large (&gt; 96²)")[1] == "0"
    # images: training curves, 2 plots per model, 3 drawn images per model = 11, all embedded, nothing fetched
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(imgs) == 1 + 2 * 2 + 3 * 2 and all(s.startswith("data:image/") for s in imgs)
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page) and "url(" not in page
    # the gallery, worst first: float: img_2 (F1 0: one false detection), img_1 (F1 2/3), img_0 (F1 1);
    # int8 misses C too: img_1 (F1 0, 2 missed) before img_2 (F1 0, 1 wrong)
    captions = re.findall(r"<figcaption>([^:]+):", page)
    assert captions == ["img_2.png", "img_1.png", "img_0.png", "img_1.png", "img_2.png", "img_0.png"]


@pytest.mark.slow
def test_page_renders_in_chromium(hand_run, tmp_path):
    if browser.find_chromium() is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it where it can)")
    path = build_report(hand_run)
    shot = browser.screenshot(path, tmp_path / "page.png", width=1000, height=1400, max_bytes=200_000)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1000, 1400) and shot.stat().st_size <= 200_000
        rgb = np.asarray(im.convert("RGB")).astype(int)

    def rows_with(colour, tolerance=40):  # the screen rows (y) holding pixels of about this colour
        return np.flatnonzero((np.abs(rgb - colour).sum(axis=2) < tolerance).any(axis=1))

    # what a reader sees, top down (measured at 1000 px wide): the title's dark text in the first 100 rows; the
    # training curves (matplotlib's C1 orange: val_loss, val_map) in 300-560; the float confusion matrix (the
    # darkest "Blues" cells, #08306b: red->red 2 of 2, background->blue 1 of 1) from 970 down
    assert (rgb[:100].sum(axis=2) < 200).sum() > 500
    orange = rows_with((0xFF, 0x7F, 0x0E))
    assert ((280 < orange) & (orange < 600)).any(), orange
    navy = rows_with((8, 48, 107))
    assert len(navy) > 100 and navy.min() > 900, navy


def test_raydet_report_rewrites_the_page_from_files(hand_run, tmp_path, capsys):
    """`raydet report RUN` builds report.html again from the files: an edited report.json and history.jsonl
    show up in the new page, not the old figures."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(hand_run, run)
    (run / "eval" / REPORT_FILE).unlink(missing_ok=True)
    report = json.loads((run / "eval" / "report.json").read_text())
    report["models"]["int8"]["coco_map_50"] = 0.123  # was 0.379
    (run / "eval" / "report.json").write_text(json.dumps(report))
    assert main(["report", str(run)]) == 0
    assert f"report: {run / 'eval' / REPORT_FILE}" in capsys.readouterr().out
    page = (run / "eval" / REPORT_FILE).read_text()
    # float's 0.626 - 0.123 = 0.503 behind
    assert _cells(page, "float")[2] == "0.626" and _cells(page, "int8")[2] == "0.123 (-0.503)"
    assert page.count("<figcaption>") == 6  # the gallery, drawn from the PREP the report names


def test_raydet_report_names_what_is_missing(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'eval' / 'report.json'} not found" in capsys.readouterr().err


def test_without_the_prep_folder_the_page_says_why_there_is_no_gallery(hand_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(hand_run, run)
    report = json.loads((run / "eval" / "report.json").read_text())
    report["data"] = str(tmp_path / "gone")
    (run / "eval" / "report.json").write_text(json.dumps(report))
    page = build_report(run).read_text()
    assert "no gallery: the test images could not be read from" in page
    assert len(re.findall(r"<img ", page)) == 1 + 2 * 2  # the plots are still there


ODD_CLASSES = ["$\\foo$", "<b>x</b>", "a|b"]  # red, blue, and a third class nobody has
ODD_FILES = ["<i>f</i>|_0.png", "img`1`*.png", "[img_2](x).png"]


def _md_cells(line: str) -> list[str]:
    """A Markdown table row's cells as a renderer splits them: at every ``|`` not escaped by a backslash."""
    unescaped = re.sub(r"\\.", "..", line)  # each escape pair -> two neutral characters (same positions)
    cuts = [i for i, c in enumerate(unescaped) if c == "|"]
    return [line[a + 1 : b].strip() for a, b in zip(cuts, cuts[1:], strict=False)]


def test_names_from_data_are_text_in_both_reports(tmp_path):
    """Class names with mathtext, HTML and a pipe, file names and a PREP folder with Markdown and HTML in them:
    report.html is written (no matplotlib error), shows them escaped, and report.md's tables keep their columns."""
    run = _write_run(tmp_path, ODD_CLASSES, ODD_FILES, prep_name="p|<i>rep_")
    page = build_report(run).read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<b>" not in page
    assert "<i>" not in page
    assert _cells(page, "&lt;b&gt;x&lt;/b&gt;")[1:] == ["2", "0.252", "0.500", "0.252", "0.500"]  # blue's row
    assert _cells(page, "a|b")[1:] == ["0", "n/a", "n/a", "n/a", "n/a"]
    assert _cells(page, "$\\foo$")[1] == "2"
    captions = re.findall(r"<figcaption>(.*?): F1", page)  # every gallery image, its file name escaped
    assert sorted(captions) == sorted([html.escape(f) for f in ODD_FILES] * 2)
    assert all(f'alt="{c}: F1' in page for c in captions)
    assert "p|&lt;i&gt;rep_" in page  # the PREP path in the page's first line

    md = (run / "eval" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 2 + 2 + 3  # two tables: head, rule, 2 models / 3 classes
    models_head, class_head = _md_cells(rows[0]), _md_cells(rows[4])
    assert all(len(_md_cells(r)) == len(models_head) for r in rows[:4])
    assert all(len(_md_cells(r)) == len(class_head) for r in rows[4:])
    assert [_md_cells(r)[0] for r in rows[6:]] == ["\\$\\\\foo\\$", "\\<b\\>x\\</b\\>", "a\\|b"]
    assert not re.search(r"(?<!\\)<[bi]>", md)  # no tag a Markdown renderer would pass on as HTML
    assert "p\\|\\<i\\>rep\\_" in md.splitlines()[2]
