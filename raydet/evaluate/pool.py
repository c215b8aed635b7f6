"""``raydet evaluate``: a run's models on a PREP split, in a Ray actor pool; report, COCO files, drawings.

Layout of the work (docs/FORMATS.md for the files):

1. the driver checks every requested model file exists and is a raydet model
   (:func:`raydet.export.runner.check_run`), before Ray starts; it reads the split once, already cut into
   one block per actor call (:func:`raydet.ingest.shards.read_blocks`, row counts from the Parquet footers), and
   ``materialize()``\\ s it, so every model reuses the same blocks instead of re-reading the Parquet; the ground
   truth is those blocks without their pixels;
2. per model, ``map_batches(Predictor, concurrency=actors)``: each actor loads the model ONCE in ``__init__``
   (:class:`raydet.export.runner.ModelRunner`) and, per batch, predicts ``heatmap`` / ``boxes``, decodes them with
   :func:`raydet.detector.decode.decode` (the ``TOP_K`` best peaks with score >= ``METRIC_SCORE_THRESHOLD``: what COCO's
   maxDets 100 sees), converts the boxes to original pixels, matches every detection to the ground truth
   (:func:`raydet.detector.metrics.match_image`, with the PREP ``difficult`` flags) and returns one row holding the
   batch's *summable* partial statistics (:class:`raydet.detector.metrics.MatchStats`) plus the per-image detections and
   latencies;
3. the driver sums the partials, finishes the metrics (:func:`raydet.detector.metrics.detection_summary`), writes the
   COCO files (``--coco-out``, default ``RUN/eval/coco``) and ``RUN/eval/report.json`` / ``report.md`` first, then the
   drawings and ``RUN/eval/report.html`` (raydet.report.page, built from those files); a failed drawing or page is
   reported, the evaluation stands.

Fault tolerance: Ray Data's actor pool creates actors with ``max_restarts=-1`` and ``max_task_retries=-1``; an
actor that dies mid-batch returns nothing for that batch, is restarted, and the batch is run again, so no batch
is lost or counted twice (tests/evaluate/test_pool.py kills an actor through a :class:`Predictor` subclass passed as
``evaluate(cfg, predictor=...)``).

Speed: each actor reserves ``threads`` CPUs and gives its interpreter exactly that many threads, so
``actors x threads`` never oversubscribes the cores. Throughput (``images_per_s``) is images divided by the time
from the first batch's start to the last batch's end inside the actors: actor start-up and model loading
(seconds, TensorFlow's import) are excluded, parallelism between actors is included; decoding and matching are
included. Latency: :class:`raydet.export.runner.ModelRunner`'s per-image model time (``.tflite``: one invoke per image).
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from raydet.cluster import storage
from raydet.cluster.nodes import check_visible
from raydet.cluster.progress import Progress
from raydet.cluster.resources import ensure_resources, read_autoscaler
from raydet.cluster.runtime import init_ray
from raydet.config import EvaluateConfig
from raydet.detector import coco
from raydet.detector.decode import NMS_IOU, TOP_K, decode, to_pixels
from raydet.detector.metrics import MatchStats, detection_summary, match_image
from raydet.errors import UserError
from raydet.evaluate.outputs import (
    DRAW_SCORE_THRESHOLD,
    ImageDetections,
    ModelResult,
    draw_or_report,
    ground_truth_pixels,
    publish_eval,
    published_dir,
    write_coco,
    write_report,
)
from raydet.export.run import Run
from raydet.export.runner import ModelRunner, batch_plan, check_run, require_models
from raydet.ingest.prep import Prep
from raydet.ingest.shards import difficult_of, read_blocks, split_rows
from raydet.report.page import build_report

# The actors' CPUs are there by now (check_actor_resources waited for an autoscaler if there is one); this bounds
# their start (TensorFlow's import, the model load): a pool not up in 10 minutes is refused, not waited for.
ACTOR_START_TIMEOUT_S = 600
METRIC_SCORE_THRESHOLD = 0.01  # lower-scored peaks change AP by nothing measurable and only fill the files
REPORT_KEYS = (
    "coco_map",
    "coco_map_50",
    "coco_map_75",
    "voc_map_50",
    "voc07_map_50",
    "per_class",
    "images",
    "detections_per_image",
    "images_per_s",
    "latency_ms_p50",
    "latency_ms_p95",
    "size_bytes",
)


# ---------------------------------------------------------------------------------------------- the actor


class Predictor:
    """Ray Data actor: one model, loaded once; ``__call__`` turns a PREP batch into one row of partial results.

    ``image_ids``: ``{file: COCO image id}`` of the split (ids shared with the COCO export, so metrics and
    pycocotools order ties of score the same way).
    """

    def __init__(self, model_path: str, num_threads: int, num_classes: int, image_ids: dict[str, int]):
        self.runner = ModelRunner(model_path, num_threads)
        self.num_classes = num_classes
        self.image_ids = image_ids
        # one warm-up call: lazy allocation and XNNPACK packing happen here, not inside the first timed batch
        self.runner.predict(np.zeros((1, self.runner.image_size, self.runner.image_size, 3), np.uint8))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:

        t_start = time.time()
        if self.runner.num_classes != self.num_classes:  # raised here, not in __init__: a task error reaches the driver
            raise UserError(
                f"{self.runner.path.name} predicts {self.runner.num_classes} classes, the data has {self.num_classes}"
            )
        outputs, seconds = self.runner.predict(batch["image"])
        decoded = decode(outputs["heatmap"], outputs["boxes"], top_k=TOP_K, score_threshold=METRIC_SCORE_THRESHOLD)
        difficult = difficult_of(batch)
        matches, images = [], []
        for i, file in enumerate(batch["file"]):
            width, height, n = float(batch["width"][i]), float(batch["height"][i]), int(batch["num_objects"][i])
            gt, gt_labels = ground_truth_pixels(batch["boxes"][i], batch["labels"][i], n, width, height)
            det = decoded[i]
            image = ImageDetections(
                file=str(file),
                image_id=self.image_ids[str(file)],
                boxes=to_pixels(det.boxes, width, height),
                labels=det.labels,
                scores=det.scores,
            )
            matches.append(
                match_image(
                    gt,
                    gt_labels,
                    image.boxes,
                    image.labels,
                    image.scores,
                    self.num_classes,
                    image_id=image.image_id,
                    gt_difficult=difficult[i, :n],
                )
            )
            images.append(image)
        partial = {
            "match": MatchStats.concat(matches) if matches else MatchStats.empty(self.num_classes),
            "images": images,
            "latency_s": seconds,
            "t_start": t_start,
            "t_end": time.time(),
            "pid": os.getpid(),
        }
        # pickled by hand: Arrow has no type for these objects, and bytes travel without a fallback warning
        return {"partial": np.array([pickle.dumps(partial)], dtype=object)}


# ---------------------------------------------------------------------------------------------- driver


def run_model(
    ds,
    name: str,
    path: str | Path,
    *,
    classes: list[str],
    image_ids: dict[str, int],
    actors: int,
    threads: int,
    batch_size: int,
    predictor: type = Predictor,
    size_bytes: int | None = None,
) -> ModelResult:
    """Evaluate one model on a (materialized) PREP dataset ``ds`` in ``actors`` actors of ``threads`` CPUs, each
    a ``predictor`` (:class:`Predictor` or a subclass taking the same arguments). ``path``: the model file, a
    local path every actor's node sees or a URI; ``size_bytes``: its size (default: read from ``path``)."""

    mapped = ds.map_batches(
        predictor,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        num_cpus=threads,
        fn_constructor_kwargs={
            "model_path": str(path),
            "num_threads": threads,
            "num_classes": len(classes),
            "image_ids": image_ids,
        },
    )
    # Hand out batches only once every actor has loaded its model: otherwise the first actor ready (seconds
    # ahead: TensorFlow's import) takes a small split alone and N actors measure as one. The context is this
    # dataset's own copy, so nothing global changes.
    mapped.context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    parts = []
    with Progress(f"evaluate: {name}", total=ds.count()) as bar:
        for row in mapped.iter_rows():  # streamed: the bar moves as each batch comes back
            parts.append(pickle.loads(row["partial"]))
            bar.update(len(parts[-1]["images"]))
    report = summarize(parts, classes, storage.size(path) if size_bytes is None else size_bytes)
    images = sorted((im for p in parts for im in p["images"]), key=lambda im: im.image_id)
    return ModelResult(name=name, report=report, images=images, actor_pids={p["pid"] for p in parts})


def summarize(parts: list[dict], classes: list[str], size_bytes: int) -> dict:
    """The actors' partial rows -> one model's report (``REPORT_KEYS``); ``per_class`` holds one dict per class:
    ``class`` (its name) and detection_summary's ``ap50``, ``voc_ap50``, ``recall50``, ``ground_truth``."""

    match = MatchStats.concat([p["match"] for p in parts]) if parts else MatchStats.empty(len(classes))
    summary = detection_summary(match)
    images = sum(len(p["images"]) for p in parts)
    detections = sum(len(im.scores) for p in parts for im in p["images"])
    latency_ms = np.concatenate([p["latency_s"] for p in parts] or [np.zeros(0)]) * 1000.0
    span = (max(p["t_end"] for p in parts) - min(p["t_start"] for p in parts)) if parts else 0.0
    report = {
        **summary,
        "per_class": [{"class": name, **c} for name, c in zip(classes, summary["per_class"], strict=True)],
        "images": images,
        "detections_per_image": detections / images if images else float("nan"),
        "images_per_s": images / span if span > 0 else float("nan"),
        "latency_ms_p50": float(np.percentile(latency_ms, 50)) if images else float("nan"),
        "latency_ms_p95": float(np.percentile(latency_ms, 95)) if images else float("nan"),
        "size_bytes": int(size_bytes),
    }
    return {k: report[k] for k in REPORT_KEYS}


def check_inputs(cfg: EvaluateConfig) -> tuple[dict[str, Path], dict, list[str]]:
    """Everything that can be refused before Ray starts: models (present, raydet models), RUN/config.json, the PREP
    manifest and split (:meth:`raydet.ingest.prep.Prep.read_manifest`), classes and image size agreeing. Returns
    (model paths, manifest, classes)."""
    paths = require_models(cfg.run, cfg.models)
    run_cfg = check_run(cfg.run, cfg.models)
    manifest = Prep(cfg.data).read_manifest(splits=(cfg.split,))
    classes = list(manifest["classes"])
    if list(run_cfg.get("classes", classes)) != classes:
        raise UserError(f"the run was trained on classes {run_cfg['classes']}, {cfg.data} has {classes}")
    if int(run_cfg.get("image_size", manifest["image_size"])) != int(manifest["image_size"]):
        raise UserError(
            f"the run's models take {run_cfg['image_size']} px images, {cfg.data} holds "
            f"{manifest['image_size']} px images"
        )
    return paths, manifest, classes


GT_COLUMNS = ("file", "boxes", "labels", "difficult", "num_objects", "width", "height")


def read_eval_split(data: str, split: str, image_size: int, actors: int, batch_size: int | None = None):
    """Read ``data``'s (a PREP path or URI) ``split`` once into Ray's object store -> (dataset, ground-truth rows
    sorted by file, {file: id}, rows per block).

    Rows are counted from the Parquet footers, so the one read already cuts the split into one block per actor
    call (``batch_plan``; raydet.ingest.shards.read_blocks): the actor pool hands out whole blocks, so a split read as a
    single block would keep all but one actor idle, and a repartition after the read would hold the pixels twice.
    Every model maps over these blocks. Ground-truth rows hold every column but ``image``.
    """

    images = sum(rows for _, rows in split_rows(data, split))
    _, rows = batch_plan(images, image_size, actors, batch_size)
    ds = read_blocks(data, split, rows).materialize()
    gt_rows = ds.select_columns([c for c in GT_COLUMNS if c in ds.columns()]).take_all()
    gt_rows.sort(key=lambda r: r["file"])
    image_ids = {r["file"]: coco.image_id(i) for i, r in enumerate(gt_rows)}
    if len(image_ids) != len(gt_rows):
        raise UserError(f"{data}/{split} lists some files more than once")
    return ds, gt_rows, image_ids, rows


def check_actor_resources(cfg: EvaluateConfig) -> None:
    """Return once the connected Ray can hold ``cfg.actors`` actors of ``cfg.threads`` CPUs, each on one node.

    ValueError naming the numbers when a fixed cluster never can (the pool would wait forever) or an autoscaling
    one's node types never can; otherwise an autoscaling cluster is asked and waited for, up to
    ``cfg.resource_timeout_s`` seconds (raydet.cluster.resources.ensure_resources).
    """

    ensure_resources(
        [{"CPU": cfg.threads}] * cfg.actors,
        what=f"--actors {cfg.actors} x --threads {cfg.threads}",
        timeout_s=cfg.resource_timeout_s,
        autoscaler=read_autoscaler(cfg.address),
    )


def evaluate(cfg: EvaluateConfig, predictor: type = Predictor, show_table: bool = True) -> dict:
    """Evaluate ``cfg.models`` of ``cfg.run`` on ``cfg.data``'s split; returns the report: ``models`` ({name:
    REPORT_KEYS}), ``split``, ``data``, ``classes``, ``actors``, ``threads``, ``batch_size``, ``top_k``, ``nms_iou``,
    ``score_threshold``, ``draw_score_threshold``, ``actor_pids`` ({name: sorted pids that returned results}),
    ``coco_dir`` (relative to RUN/eval when inside it, else absolute). ``predictor``: the actor class
    (:class:`Predictor` or a subclass with its constructor); ``show_table``: print the models table (``raydet
    run`` prints its own at the end).

    ``RUN/eval`` is written whole or not at all: into a staging folder beside it, swapped in at the end, so an
    evaluate that fails or is interrupted leaves the previous one as it was. ``cfg.run`` and ``cfg.data`` may be
    URIs: the run's small files and models are fetched into a local copy (raydet.cluster.storage.local_copy), each actor
    fetches its model file itself, and the new RUN/eval goes back at the end."""
    fetch = [Run.CONFIG, Run.HISTORY, *(Run.model_name(name) for name in cfg.models)]
    run_id = uuid.uuid4().hex[:12]
    shown = published_dir(cfg.run, run_id)
    with storage.local_copy(cfg.run, fetch=fetch) as run:
        stage = run / f"{EVAL_STAGING}{run_id}"
        try:
            report = _evaluate(cfg, run, stage, predictor, show_table, shown)
            _swap_in(stage, Run(run).local(Run.EVAL))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if storage.is_uri(cfg.run):
            publish_eval(Run(run).local(Run.EVAL), cfg.run, run_id)
            shutil.rmtree(Run(run).local(Run.EVAL))  # published under its own prefix: local_copy must not send it back
    return report


def _evaluate(cfg: EvaluateConfig, run: Path, stage: Path, predictor: type, show_table: bool, shown: str) -> dict:
    """:func:`evaluate` with the RUN folder at the local ``run`` and RUN/eval written into ``stage``; ``shown``:
    where RUN/eval will be once the command ends (for the messages)."""
    local = replace(cfg, run=str(run))
    paths, manifest, classes = check_inputs(local)
    coco_dir, coco_recorded = coco_target(cfg, stage)
    init_ray(cfg.address)
    _check_visible(cfg)
    check_actor_resources(cfg)

    # 1. read the split once; every model maps over the same materialized blocks
    ds, gt_rows, image_ids, batch_size = read_eval_split(
        cfg.data, cfg.split, int(manifest["image_size"]), cfg.actors, cfg.batch_size
    )

    # 2. each model in its actor pool (a run in a bucket: each actor fetches the model file from there)
    results = {}
    for name, path in paths.items():
        source = storage.join(cfg.run, path.name) if storage.is_uri(cfg.run) else path
        print(
            f"evaluate: {name} ({path.name}, {path.stat().st_size:,} bytes) on {len(gt_rows)} images, "
            f"{cfg.actors} actor(s) x {cfg.threads} thread(s)",
            flush=True,
        )
        results[name] = run_model(
            ds,
            name,
            source,
            classes=classes,
            image_ids=image_ids,
            actors=cfg.actors,
            threads=cfg.threads,
            batch_size=batch_size,
            predictor=predictor,
            size_bytes=path.stat().st_size,
        )

    # 3. COCO files and the report first: a failed drawing must not cost them
    report = {
        "models": {name: r.report for name, r in results.items()},
        "split": cfg.split,
        "data": storage.normalize(cfg.data),
        "classes": classes,
        "actors": cfg.actors,
        "threads": cfg.threads,
        "batch_size": batch_size,
        "top_k": TOP_K,
        "nms_iou": NMS_IOU,
        "score_threshold": METRIC_SCORE_THRESHOLD,
        "draw_score_threshold": DRAW_SCORE_THRESHOLD,
        # processes that returned results per model: a pool of N that shared the work shows N (+1 per restart)
        "actor_pids": {name: sorted(r.actor_pids) for name, r in results.items()},
        "coco_dir": coco_recorded,
    }  # where raydet.report.page finds them again
    # printed where they will be once RUN/eval is swapped in (and, for a URI run, sent back), not in the stage
    inside = coco_dir == stage or stage in coco_dir.parents
    write_coco(
        coco_dir, gt_rows, classes, results, shown=storage.join(shown, coco_recorded) if inside else coco_recorded
    )
    write_report(stage, report, show_table=show_table)
    if cfg.draw:
        draw_or_report(
            stage / "images",
            ds,
            cfg.draw,
            results,
            classes,
            manifest.get("source"),
            shown=storage.join(shown, "images"),
        )
    _html_or_report(run, stage, cfg.run, shown)
    return report


def _check_visible(cfg: EvaluateConfig) -> None:
    """On a multi-node cluster, refuse a local PREP or RUN that not every node sees: the split is read and the
    model files are loaded on whichever nodes run the tasks and actors (raydet.cluster.nodes)."""

    check_visible(cfg.data, write=False, what="--data")
    check_visible(cfg.run, write=False, what="RUN")


EVAL_STAGING = ".eval-staging-"  # RUN/.eval-staging-<id>: an evaluate's RUN/eval until it is complete


def coco_target(cfg: EvaluateConfig, stage: Path) -> tuple[Path, str]:
    """Where the COCO files are written now, and what report.json records (``coco_dir``): ``--coco-out``, else
    ``RUN/eval/coco``; inside RUN/eval it is written in ``stage`` and recorded relative to RUN/eval, elsewhere
    written and recorded as it is. ValueError for a URI outside RUN/eval (the files are written locally)."""
    eval_dir = Run(cfg.run).file(Run.EVAL)
    wanted = storage.normalize(cfg.coco_out) if cfg.coco_out else storage.join(eval_dir, "coco")
    if wanted == eval_dir or wanted.startswith(eval_dir + "/"):
        relative = wanted.removeprefix(eval_dir).lstrip("/") or "."  # not relpath: it needs a current directory
        return stage / relative, relative
    if storage.is_uri(wanted):
        raise UserError(
            f"--coco-out {cfg.coco_out}: a URI must lie inside the run's eval folder ({eval_dir}); "
            "give a local path or leave it out"
        )
    return Path(wanted), wanted


def _swap_in(stage: Path, eval_dir: Path) -> None:
    """``stage`` becomes ``eval_dir``: the previous one is renamed aside first, then deleted."""
    old = eval_dir.with_name(f".eval-old-{stage.name.rsplit('-', 1)[1]}")
    if eval_dir.exists():
        eval_dir.rename(old)
    stage.rename(eval_dir)
    shutil.rmtree(old, ignore_errors=True)


def _html_or_report(run: Path, eval_dir: Path, run_shown: str, shown: str) -> None:
    """Write ``eval_dir``/report.html (raydet.report.page; ``eval_dir``: RUN/eval or its staging folder; ``run_shown``
    and ``shown``: where RUN and RUN/eval are, for the messages); a failure is printed, not raised."""

    try:
        build_report(run, eval_dir=eval_dir)
        print(f"report: {storage.join(shown, 'report.html')}", flush=True)
    except Exception as exc:  # the page is a view of files already written
        print(
            f"report.html failed ({type(exc).__name__}: {exc}); report.json and COCO files are written; "
            f"`raydet report {run_shown}` tries again",
            flush=True,
        )
