"""``raydet evaluate``: a run's models on a PREP split, in a Ray actor pool; report, COCO files, drawings.

Layout of the work (docs/FORMATS.md for the files):

1. the driver checks every requested model file exists (before Ray starts), reads the split once with
   ``ray.data.read_parquet`` and ``materialize()``\\ s it, so every model reuses the same blocks instead of
   re-reading and re-decoding the Parquet;
2. per model, ``map_batches(Predictor, concurrency=actors)``: each actor loads the model ONCE in ``__init__``
   (LiteRT interpreter with XNNPACK for ``.tflite``, tf_keras for the float model) and, per batch, predicts class
   (argmax), score (softmax max) and box (normalized xyxy -> original pixel xyxy) and returns one row holding the
   batch's *summable* partial statistics (:class:`raydet.metrics.MatchStats`, :class:`raydet.metrics.ClassBoxStats`)
   plus the per-image predictions and latencies;
3. the driver sums the partials and finishes the metrics (:func:`raydet.metrics.detection_summary`), writes
   ``RUN/eval/report.json`` / ``report.md``, the drawings, and (``--coco-out``) the COCO files.

Fault tolerance: Ray Data's actor pool creates actors with ``max_restarts=-1`` and ``max_task_retries=-1``; an
actor that dies mid-batch returns nothing for that batch, is restarted, and the batch is run again, so no batch
is lost or counted twice. ``RAYDET_TEST_CRASH_ONCE=<marker path>`` makes the first actor call that creates the
marker file exit the process (a test hook: tests/test_evaluate.py kills one actor this way).

Speed: each actor reserves ``threads`` CPUs and gives its interpreter exactly that many threads, so
``actors x threads`` never oversubscribes the cores. Throughput (``images_per_s``) is images divided by the time
from the first batch's start to the last batch's end inside the actors: actor start-up and model loading
(seconds, TensorFlow's import) are excluded, parallelism between actors is included.
Latency: a ``.tflite`` model is invoked one image at a time, as on a device, and each invoke is timed; the Keras
model is called once per batch (a call costs milliseconds of overhead, so one image per call would misrepresent
it), and each image gets the call's time divided by the batch's images.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raydet.config import MODEL_NAMES, EvaluateConfig
from raydet.data import read_split
from raydet.runtime import init_ray, use_legacy_keras
from raydet.sizes import format_size

CRASH_ENV = "RAYDET_TEST_CRASH_ONCE"  # test hook, see the module docstring
# Images per actor call when --batch-size is not given: ~24 MiB of uint8 pixels (512 at 64-96 px, 167 at 224 px),
# at most 512. Ray Data costs ~10 ms per call on this 2-core machine (moving the block, the task, the result),
# which at 64 px is as long as predicting 20-40 images: benchmarks/infer.py measured two int8 actors 1.18-1.36x
# one with 64 per call, 1.46x with 256 and 1.67x with 512 (24,000 images). The float Keras model predicts
# a call's images in chunks of ~KERAS_CHUNK_BYTES of pixels (a whole call at 64 px, 55 images at 224 px), so
# large calls at large sizes do not mean gigabytes of activations; chunks of 64 at 64 px cost a third of its speed.
AUTO_BATCH_BYTES = 24 * 2**20
MAX_AUTO_BATCH = 512
KERAS_CHUNK_BYTES = 8 * 2**20
ACTOR_START_TIMEOUT_S = 600  # a cluster that cannot place the pool's actors in 10 minutes is refused, not waited for
REPORT_KEYS = ("class_accuracy", "mean_iou", "voc_map_50", "coco_map", "coco_map_50", "images", "images_per_s",
               "latency_ms_p50", "latency_ms_p95", "size_bytes")


# ---------------------------------------------------------------------------------------------- model files

def model_file(run: str | os.PathLike, name: str) -> Path:
    """Where model ``name`` (one of ``MODEL_NAMES``) of a run lives: ``model.keras`` or ``model_<name>.tflite``."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}: expected one of {MODEL_NAMES}")
    return Path(run) / ("model.keras" if name == "float" else f"model_{name}.tflite")


def available_models(run: str | os.PathLike) -> list[str]:
    """The model names whose files exist in ``run``, in ``MODEL_NAMES`` order."""
    return [n for n in MODEL_NAMES if model_file(run, n).exists()]


def require_models(run: str | os.PathLike, names: tuple[str, ...]) -> dict[str, Path]:
    """``{name: path}`` for ``names``; FileNotFoundError naming the missing ones and the ones that exist."""
    if not Path(run).is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    missing = [n for n in names if not model_file(run, n).exists()]
    if missing:
        have = available_models(run)
        raise FileNotFoundError(
            f"model(s) {', '.join(missing)} not found in {run} "
            f"(expected {', '.join(model_file(run, n).name for n in missing)}); "
            f"this run has: {', '.join(have) if have else 'no models'}"
            + ("; make the .tflite files with `raydet quantize RUN`" if set(missing) - {"float"} else ""))
    return {n: model_file(run, n) for n in names}


class ModelRunner:
    """One model loaded in this process: uint8 images in, logits, boxes and per-image seconds out.

    ``.tflite`` files run in the LiteRT interpreter (:class:`raydet.tflite.TFLiteModel`; XNNPACK is its default
    CPU delegate), one image per invoke;
    ``.keras`` files run in tf_keras, one call per batch. ``num_threads`` caps the threads either runtime uses.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        self.path = Path(path)
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")
        if self.path.suffix == ".tflite":
            self._load_tflite(num_threads)
        elif self.path.suffix == ".keras":
            self._load_keras(num_threads)
        else:
            raise ValueError(f"{self.path}: not a .keras or .tflite model")

    def _load_tflite(self, num_threads: int) -> None:
        from raydet.tflite import TFLiteModel

        # batch_size 1: one image per invoke, as on a device, so each invoke's time is one image's latency
        self._tflite = TFLiteModel(str(self.path), num_threads=num_threads, batch_size=1)
        self.image_size = self._tflite.image_size
        self._predict = self._predict_tflite

    def _load_keras(self, num_threads: int) -> None:
        use_legacy_keras()
        import tensorflow as tf
        import tf_keras

        try:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already ran something in this process; its thread pools are fixed by now
        self._model = tf_keras.models.load_model(self.path, compile=False)
        self.image_size = int(self._model.input_shape[1])
        self._predict = self._predict_keras

    def _predict_tflite(self, images: np.ndarray):
        logits, boxes, seconds = [], [], np.zeros(len(images))
        for i in range(len(images)):
            t = time.perf_counter()
            out = self._tflite.predict(images[i:i + 1])
            seconds[i] = time.perf_counter() - t
            logits.append(out["class_logits"])
            boxes.append(out["boxes"])
        return np.concatenate(logits), np.concatenate(boxes), seconds

    def _predict_keras(self, images: np.ndarray):
        t = time.perf_counter()
        chunk = max(1, KERAS_CHUNK_BYTES // max(1, images[0].nbytes)) if len(images) else 1
        outs = [self._model.predict_on_batch(images[i:i + chunk].astype(np.float32))
                for i in range(0, len(images), chunk)]
        seconds = np.full(len(images), (time.perf_counter() - t) / max(1, len(images)))
        if not outs:
            return np.zeros((0, 0), np.float32), np.zeros((0, 4), np.float32), seconds
        return (np.concatenate([np.asarray(o["class_logits"]) for o in outs]),
                np.concatenate([np.asarray(o["boxes"]) for o in outs]), seconds)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``images`` (N, S, S, 3) uint8 RGB 0..255 -> (``class_logits`` (N, C) float32, ``boxes`` (N, 4) float32
        normalized xyxy, ``seconds`` (N,) float64 model time per image)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"{self.path.name} takes (N, {self.image_size}, {self.image_size}, 3) images, "
                             f"got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, 0), np.float32), np.zeros((0, 4), np.float32), np.zeros(0)
        return self._predict(images)


def decode_predictions(logits: np.ndarray, boxes_norm: np.ndarray, width: np.ndarray, height: np.ndarray):
    """Model outputs -> one detection per image.

    ``logits`` (N, C); ``boxes_norm`` (N, 4) normalized xyxy; ``width``/``height`` (N,) original pixels.
    Returns ``labels`` (N,) int64 argmax, ``scores`` (N,) float64 softmax max, ``boxes`` (N, 4) float64 xyxy in
    original pixels, clipped to the image (a sigmoid can't leave [0, 1], but a quantized output can by a step)
    and ordered so that xmax >= xmin and ymax >= ymin (the box head does not enforce it).
    """
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))  # stable softmax
    probs = z / z.sum(axis=1, keepdims=True)
    b = np.clip(np.asarray(boxes_norm, np.float64), 0.0, 1.0)
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)
    scale = np.stack([width, height, width, height], axis=1).astype(np.float64)  # normalized -> pixel, per row
    return probs.argmax(axis=1), probs.max(axis=1), b * scale


def ground_truth_pixels(boxes_norm: np.ndarray, labels: np.ndarray, num_objects: int, width: int, height: int):
    """One PREP row's padded ``boxes`` (K, 4) normalized xyxy and ``labels`` (K,) -> the real (G, 4) pixel xyxy
    boxes and (G,) labels (padding rows dropped)."""
    from raydet.boxes import denormalize

    n = int(num_objects)
    return denormalize(np.asarray(boxes_norm)[:n], width, height), np.asarray(labels)[:n].astype(np.int64)


# ---------------------------------------------------------------------------------------------- the actor

class Predictor:
    """Ray Data actor: one model, loaded once; ``__call__`` turns a PREP batch into one row of partial results.

    ``image_ids``: ``{file: COCO image id}`` of the split (ids shared with the COCO export, so metrics and
    pycocotools order ties of score the same way).
    """

    def __init__(self, model_path: str, num_threads: int, num_classes: int, image_ids: dict[str, int],
                 crash_marker: str | None = None):
        self.runner = ModelRunner(model_path, num_threads)
        self.num_classes = num_classes
        self.image_ids = image_ids
        self.crash_marker = crash_marker
        # one warm-up call: lazy allocation and XNNPACK packing happen here, not inside the first timed batch
        self.runner.predict(np.zeros((1, self.runner.image_size, self.runner.image_size, 3), np.uint8))

    def _maybe_crash(self) -> None:
        if not self.crash_marker:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one caller wins
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)  # die as a crashed process does: no exception, no cleanup, no result for this batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raydet.metrics import class_box_stats, match_image

        t_start = time.time()
        self._maybe_crash()
        logits, boxes_norm, seconds = self.runner.predict(batch["image"])
        width, height = batch["width"].astype(np.float64), batch["height"].astype(np.float64)
        labels, scores, boxes_px = decode_predictions(logits, boxes_norm, width, height)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"{self.runner.path.name} predicts {logits.shape[1]} classes, "
                             f"the data has {self.num_classes}")
        gt_px = batch["boxes"].astype(np.float64) * np.stack([width, height, width, height], 1)[:, None, :]
        gt_labels = np.where(np.arange(gt_px.shape[1])[None, :] < batch["num_objects"][:, None],
                             batch["labels"], -1)  # -1 marks padding rows for class_box_stats
        class_box = class_box_stats(gt_px, gt_labels, boxes_px, labels)
        match, predictions = 0, []
        for i, file in enumerate(batch["file"]):
            n = int(batch["num_objects"][i])
            image_id = self.image_ids[str(file)]
            match = match + match_image(gt_px[i, :n], gt_labels[i, :n], boxes_px[i:i + 1], labels[i:i + 1],
                                        scores[i:i + 1], self.num_classes, image_id=image_id)
            predictions.append({"file": str(file), "image_id": image_id, "label": int(labels[i]),
                                "score": float(scores[i]), "box": boxes_px[i].tolist()})
        partial = {"match": match, "class_box": class_box, "predictions": predictions,
                   "latency_s": seconds, "t_start": t_start, "t_end": time.time(), "pid": os.getpid()}
        # pickled by hand: Arrow has no type for these objects, and bytes travel without a fallback warning
        return {"partial": np.array([pickle.dumps(partial)], dtype=object)}


# ---------------------------------------------------------------------------------------------- driver

@dataclass
class ModelResult:
    """One model's finished figures (``report``: the REPORT_KEYS) and its per-image predictions."""

    name: str
    report: dict
    predictions: list[dict] = field(default_factory=list)
    actor_pids: set[int] = field(default_factory=set)  # the processes that produced results (a restart adds one)


def run_model(ds, name: str, path: Path, *, num_classes: int, image_ids: dict[str, int], actors: int,
              threads: int, batch_size: int) -> ModelResult:
    """Evaluate one model on a (materialized) PREP dataset ``ds`` in ``actors`` actors of ``threads`` CPUs."""
    import ray

    from raydet.metrics import ClassBoxStats, MatchStats, detection_summary

    mapped = ds.map_batches(
        Predictor, compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, num_cpus=threads,
        fn_constructor_kwargs={"model_path": str(path), "num_threads": threads, "num_classes": num_classes,
                               "image_ids": image_ids, "crash_marker": os.environ.get(CRASH_ENV)})
    # Hand out batches only once every actor has loaded its model: otherwise the first actor ready (seconds
    # ahead: TensorFlow's import) takes a small split alone and N actors measure as one. The context is this
    # dataset's own copy, so nothing global changes.
    mapped.context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    partials = mapped.take_all()
    parts = [pickle.loads(row["partial"]) for row in partials]
    match = sum((p["match"] for p in parts), MatchStats.empty(num_classes))
    class_box = sum((p["class_box"] for p in parts), ClassBoxStats())
    predictions = sorted((q for p in parts for q in p["predictions"]), key=lambda q: q["image_id"])
    latency_ms = np.concatenate([p["latency_s"] for p in parts] or [np.zeros(0)]) * 1000.0
    span = (max(p["t_end"] for p in parts) - min(p["t_start"] for p in parts)) if parts else 0.0
    images = len(predictions)
    report = {"class_accuracy": class_box.accuracy, "mean_iou": class_box.mean_iou, **detection_summary(match),
              "images": images, "images_per_s": images / span if span > 0 else float("nan"),
              "latency_ms_p50": float(np.percentile(latency_ms, 50)) if images else float("nan"),
              "latency_ms_p95": float(np.percentile(latency_ms, 95)) if images else float("nan"),
              "size_bytes": path.stat().st_size}
    return ModelResult(name=name, report={k: report[k] for k in REPORT_KEYS}, predictions=predictions,
                       actor_pids={p["pid"] for p in parts})


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    return json.loads(path.read_text())


def check_inputs(cfg: EvaluateConfig) -> tuple[dict[str, Path], dict, list[str]]:
    """Everything that can be refused before Ray starts: models, PREP split, classes and image size agreeing.
    Returns (model paths, manifest, classes)."""
    paths = require_models(cfg.run, cfg.models)
    manifest = _read_json(Path(cfg.data) / "manifest.json", "the PREP manifest written by `raydet prepare`")
    split = Path(cfg.data) / cfg.split
    if not split.is_dir() or not any(split.glob("*.parquet")):
        raise FileNotFoundError(f"no Parquet files in {split} (the {cfg.split} split of {cfg.data})")
    run_cfg_path = Path(cfg.run) / "config.json"
    classes = list(manifest["classes"])
    if run_cfg_path.is_file():
        run_cfg = json.loads(run_cfg_path.read_text())
        if list(run_cfg.get("classes", classes)) != classes:
            raise ValueError(f"the run was trained on classes {run_cfg['classes']}, {cfg.data} has {classes}")
        if int(run_cfg.get("image_size", manifest["image_size"])) != int(manifest["image_size"]):
            raise ValueError(f"the run's models take {run_cfg['image_size']} px images, {cfg.data} holds "
                             f"{manifest['image_size']} px images")
    return paths, manifest, classes


def batch_plan(images: int, image_size: int, actors: int, batch_size: int | None = None) -> tuple[int, int]:
    """How to cut ``images`` rows for an actor pool -> (blocks, rows per block); one block is one actor call.

    Rows per call: ``batch_size``, or when None ~``AUTO_BATCH_BYTES`` of pixels (16..``MAX_AUTO_BATCH``); then
    at least 2 blocks per actor (when there are that many rows) so no actor idles while another works through
    the last big block, and the rows spread evenly over the blocks.
    """
    if images <= 0:
        return 1, 1
    rows = batch_size or int(np.clip(AUTO_BATCH_BYTES // (image_size * image_size * 3), 16, MAX_AUTO_BATCH))
    blocks = min(images, max(math.ceil(images / rows), 2 * actors))
    return blocks, math.ceil(images / blocks)


def load_split(split_dir: Path, image_size: int, actors: int, batch_size: int | None = None):
    """Read a PREP split once into Ray's object store -> (dataset, ground-truth rows sorted by file, {file: id},
    rows per block).

    The dataset is cut into one block per actor call (``batch_plan``): the actor pool hands out whole blocks,
    so a split read as a single block would keep all but one actor idle. Ground-truth rows hold every column
    but ``image``.
    """

    from raydet import coco

    ds = read_split(split_dir.parent, split_dir.name).materialize()  # image: raw bytes -> (N, S, S, 3) uint8
    blocks, rows = batch_plan(ds.count(), image_size, actors, batch_size)
    ds = ds.repartition(blocks).materialize()
    gt_rows = ds.select_columns(["file", "boxes", "labels", "num_objects", "width", "height"]).take_all()
    gt_rows.sort(key=lambda r: r["file"])
    image_ids = {r["file"]: coco.image_id(i) for i, r in enumerate(gt_rows)}
    if len(image_ids) != len(gt_rows):
        raise ValueError(f"{split_dir} lists some files more than once")
    return ds, gt_rows, image_ids, rows


def evaluate(cfg: EvaluateConfig) -> dict:
    """Evaluate ``cfg.models`` of ``cfg.run`` on ``cfg.data``'s split; returns the report (``{"models": ...}``)."""
    import ray

    from raydet import coco

    paths, manifest, classes = check_inputs(cfg)
    init_ray(cfg.address)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cfg.actors * cfg.threads > cpus:
        raise ValueError(f"--actors {cfg.actors} x --threads {cfg.threads} needs {cfg.actors * cfg.threads} CPUs, "
                         f"the Ray cluster has {cpus:g}")

    # 1. read the split once; every model maps over the same materialized blocks
    ds, gt_rows, image_ids, batch_size = load_split(Path(cfg.data) / cfg.split, int(manifest["image_size"]),
                                                      cfg.actors, cfg.batch_size)

    # 2. each model in its actor pool
    results = {}
    for name, path in paths.items():
        print(f"evaluate: {name} ({path.name}, {path.stat().st_size:,} bytes) on {len(gt_rows)} images, "
              f"{cfg.actors} actor(s) x {cfg.threads} thread(s)", flush=True)
        results[name] = run_model(ds, name, path, num_classes=len(classes), image_ids=image_ids,
                                  actors=cfg.actors, threads=cfg.threads, batch_size=batch_size)

    # 3. report, drawings, COCO files
    report = {"models": {name: r.report for name, r in results.items()}, "split": cfg.split,
              "data": str(Path(cfg.data).resolve()), "classes": classes, "actors": cfg.actors,
              "threads": cfg.threads, "batch_size": batch_size,
              # processes that returned results per model: a pool of N that shared the work shows N (+1 per restart)
              "actor_processes": {name: len(r.actor_pids) for name, r in results.items()}}
    out = Path(cfg.run) / "eval"
    coco.write_json(out / "report.json", _json_safe(report))
    table = format_table(report["models"])
    (out / "report.md").write_text(_markdown(report, table))
    print(table, flush=True)
    if cfg.draw:
        examples = sorted(ds.limit(cfg.draw).take_all(), key=lambda r: r["file"])
        sheets = draw_examples(out / "images", examples, results, classes, manifest.get("source"))
        print(f"drawings: {len(examples)} images per model in {out / 'images'} "
              f"(contact sheets: {', '.join(p.name for p in sheets)})", flush=True)
    if cfg.coco_out:
        write_coco(Path(cfg.coco_out), gt_rows, classes, results)
    return report


def _json_safe(obj):
    """NaN (a metric without ground truth) -> None, since standard JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_table(models: dict[str, dict]) -> str:
    """The report's models as a Markdown table (also printed)."""
    head = ["model", "class acc", "mean IoU", "VOC AP50", "COCO mAP", "COCO AP50", "images", "images/s",
            "p50 ms", "p95 ms", "size"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, fmt):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    for name, m in models.items():
        cells = [name, f(m["class_accuracy"], ".3f"), f(m["mean_iou"], ".3f"), f(m["voc_map_50"], ".3f"),
                 f(m["coco_map"], ".3f"), f(m["coco_map_50"], ".3f"), str(m["images"]), f(m["images_per_s"], ".1f"),
                 f(m["latency_ms_p50"], ".3f"), f(m["latency_ms_p95"], ".3f"), format_size(m["size_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(report: dict, table: str) -> str:
    return (f"# raydet evaluation\n\n{report['split']} split of `{report['data']}`, classes: "
            f"{', '.join(report['classes'])}; {report['actors']} actor(s) x {report['threads']} thread(s), "
            f"batch size {report['batch_size']}.\n\n{table}\n\n"
            "- class acc: predicted class vs the image's largest object; mean IoU: predicted box vs the "
            "best-matching ground-truth box.\n"
            "- VOC AP50: all-point AP at IoU > 0.5; COCO mAP / AP50: pycocotools' 101-point AP at IoU .50:.95 / .50.\n"
            "- images/s: from the first batch's start to the last batch's end in the actors (model loading "
            "excluded).\n"
            "- latency: .tflite models are invoked one image at a time and each invoke is timed; the Keras model "
            "is called once per batch and each image gets the call's time / batch size.\n")


def _original_image(source: str | None, row: dict) -> np.ndarray:
    """The row's image at its original size, RGB uint8: the dataset's own file when it is reachable on this
    machine (sharper), else the PREP image stretched back to ``width`` x ``height``."""
    import cv2
    from PIL import Image

    if source and "://" not in source:
        path = Path(source) / row["file"]
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            if rgb.shape[:2] == (int(row["height"]), int(row["width"])):
                return rgb
        except OSError:
            pass  # moved, unreadable or not local: fall back to the PREP pixels
    return cv2.resize(np.asarray(row["image"]), (int(row["width"]), int(row["height"])),
                      interpolation=cv2.INTER_LINEAR)


def draw_examples(out: Path, rows: list[dict], results: dict[str, ModelResult], classes: list[str],
                  source: str | None) -> list[Path]:
    """Draw ``rows`` (PREP rows with ``image``) with ground truth and each model's prediction.

    Writes ``out/<model>_<k>_<stem>.png`` per image and model and ``out/contact_sheet_<model>.png``; returns the
    contact sheets' paths.
    """
    from raydet import draw

    sheets = []
    bases = [_original_image(source, r) for r in rows]
    for name, result in results.items():
        by_file = {p["file"]: p for p in result.predictions}
        drawn, captions = [], []
        for k, (row, base) in enumerate(zip(rows, bases)):
            gt, gt_labels = ground_truth_pixels(row["boxes"], row["labels"], row["num_objects"], row["width"],
                                                row["height"])
            pred = by_file[row["file"]]
            img = draw.draw_detections(base, gt, [classes[i] for i in gt_labels], np.asarray([pred["box"]]),
                                       [classes[pred["label"]]], [pred["score"]])
            stem = Path(row["file"]).stem
            draw.write_png(out / f"{name}_{k:03d}_{stem}.png", img)
            drawn.append(img)
            captions.append(f"{stem}: {classes[pred['label']]} {pred['score']:.2f}")
        sheet = draw.contact_sheet(drawn, columns=4, tile=256, captions=captions)
        sheets.append(draw.write_png(out / f"contact_sheet_{name}.png", sheet))
    return sheets


def write_coco(out: Path, gt_rows: list[dict], classes: list[str], results: dict[str, ModelResult]) -> list[Path]:
    """``out/ground_truth.json`` (COCO instances; ``file_name`` = the Parquet ``file``, ids = position + 1 in
    ``gt_rows``, which must be sorted as the ids were given) and ``out/detections_<model>.json`` (COCO results,
    bbox ``[xmin, ymin, w, h]`` original pixels)."""
    from raydet import coco

    images = []
    for row in gt_rows:
        boxes, labels = ground_truth_pixels(row["boxes"], row["labels"], row["num_objects"], row["width"],
                                            row["height"])
        images.append({"file": row["file"], "width": int(row["width"]), "height": int(row["height"]),
                       "boxes": boxes, "labels": labels})
    written = [coco.write_json(out / "ground_truth.json", coco.ground_truth(images, classes))]
    for name, result in results.items():
        written.append(coco.write_json(out / f"detections_{name}.json",
                                       coco.detections(result.predictions, classes)))
    print(f"COCO files: {', '.join(p.name for p in written)} in {out}", flush=True)
    return written
