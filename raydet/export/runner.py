"""Running a run's models: which of them a RUN holds, checking a model file is a raydet model, one runner for
.keras and .tflite, and how to cut images into actor calls (:func:`batch_plan`, shared by ``raydet evaluate`` and
benchmarks/infer.py). The model file names are :class:`raydet.export.run.Run`'s.

Every model has the dense contract of :mod:`raydet.detector.model`: input ``image`` (N, S, S, 3) pixels 0..255, outputs
``heatmap`` (N, G, G, C) and ``boxes`` (N, G, G, 4) ``[off_x, off_y, w, h]`` per cell; a file with other outputs
is refused by :func:`check_run` / :class:`ModelRunner` with a UserError naming it.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from raydet.cluster import storage
from raydet.config import MODEL_NAMES
from raydet.detector.model import OUTPUT_NAMES
from raydet.errors import UserError, UserFileNotFoundError
from raydet.export import heavy
from raydet.export.run import KNOWN_MODELS, Run
from raydet.export.tflite import TFLiteModel, signature

KERAS_ARCHITECTURE = "config.json"  # inside a .keras zip: the model's architecture (not a RUN's config.json)
# Images per Keras call: ~8 MiB of uint8 pixels (a whole actor call at 64 px, 55 images at 224 px), so a large
# call at a large size does not mean gigabytes of activations.
KERAS_CHUNK_BYTES = 8 * 2**20
# Images per actor call (batch_plan) when no batch size is given: ~24 MiB of uint8 pixels (512 at 64-96 px, 167
# at 224 px), at most 512. Ray Data costs ~10 ms per call on a 2-core machine (moving the block, the task, the
# result), as long as predicting tens of small images, so small calls hide a second actor's gain
# (benchmarks/infer.py).
AUTO_BATCH_BYTES = 24 * 2**20
MAX_AUTO_BATCH = 512


# ---------------------------------------------------------------------------------------------- model files


def available_models(run: str | os.PathLike, names: tuple[str, ...] = MODEL_NAMES) -> list[str]:
    """The model names among ``names`` whose files exist in the local RUN folder ``run``, in ``names`` order."""
    return [n for n in names if Run(run).model(n).exists()]


def require_models(run: str | os.PathLike, names: tuple[str, ...]) -> dict[str, Path]:
    """``{name: path}`` for ``names``; FileNotFoundError naming the missing ones and the ones that exist."""
    if not Path(run).is_dir():
        raise UserFileNotFoundError(f"run folder {run} does not exist")
    missing = [n for n in names if not Run(run).model(n).exists()]
    if missing:
        have = available_models(run)
        raise UserFileNotFoundError(
            f"model(s) {', '.join(missing)} not found in {run} "
            f"(expected {', '.join(Run.model_name(n) for n in missing)}); "
            f"this run has: {', '.join(have) if have else 'no models'}"
            + ("; make the .tflite files with `raydet quantize RUN`" if set(missing) - {"float"} else "")
        )
    return {n: Run(run).model(n) for n in names}


# ---------------------------------------------------------------------------------------------- checks


def model_output_names(path: str | os.PathLike) -> list[str]:
    """The output names of a model file, read without TensorFlow: a ``.keras`` zip's ``config.json``
    (``output_layers``), a ``.tflite`` file's ``serving_default`` signature."""
    path = Path(path)
    if path.suffix == ".tflite":
        return signature(str(path))["outputs"]
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as z:
                outputs = json.loads(z.read(KERAS_ARCHITECTURE))["config"].get("output_layers", [])
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a readable .keras model file ({exc})") from exc
        # dict outputs: {name: [layer, 0, 0]}; a list of outputs: [[layer, 0, 0], ...]
        return list(outputs) if isinstance(outputs, dict) else [o[0] for o in outputs]
    raise UserError(f"{path}: not a .keras or .tflite model")


def _not_a_raydet_model(path: Path, found) -> UserError:
    """The refusal of a model file whose outputs (``found``: their names or shapes) are not raydet's."""
    return UserError(
        f"{path} has outputs {found}: not a raydet model (outputs heatmap (N, G, G, C) and boxes (N, G, G, 4))"
    )


def check_model_file(path: str | os.PathLike) -> None:
    """UserError unless the ``.keras`` or ``.tflite`` file at ``path`` has the outputs ``heatmap`` and ``boxes``."""
    names = model_output_names(path)
    if not set(OUTPUT_NAMES) <= set(names):
        raise _not_a_raydet_model(path, sorted(names))


def check_run(run: str | os.PathLike, names: tuple[str, ...] | None = None) -> dict:
    """Check a local RUN folder before any model is loaded: its ``config.json`` when there is one
    (:meth:`raydet.export.run.Run.read_config`) and the outputs of the model files ``names`` (default: every
    model of the run that exists). -> the config's dict ({} when there is none); UserError naming the file and
    what is wrong in it."""
    config = Run(run).read_config(missing_ok=True)
    for name in available_models(run, KNOWN_MODELS) if names is None else names:
        if Run(run).model(name).exists():
            check_model_file(Run(run).model(name))
    return config


def check_outputs(path: Path, shapes: dict[str, tuple]) -> None:
    """UserError unless ``shapes`` (output name -> shape, batch first) hold a rank-4 ``heatmap`` and a
    rank-4 ``boxes`` with 4 channels."""
    heatmap, boxes = shapes.get("heatmap"), shapes.get("boxes")
    if heatmap is None or boxes is None or len(heatmap) != 4 or len(boxes) != 4 or boxes[-1] != 4:
        raise _not_a_raydet_model(path, dict(sorted(shapes.items())))


# ---------------------------------------------------------------------------------------------- the runner


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


def _local_model(path: str | os.PathLike) -> Path:
    """A model file's local path: itself, or for a URI (a run in a bucket) a copy fetched into a temporary
    folder of this process (an actor on any node can load it; the folder goes when the process ends)."""

    if not storage.is_uri(path):
        return Path(path)
    folder = Path(tempfile.mkdtemp(prefix="raydet-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if storage.kind(path) != "file":
        raise UserFileNotFoundError(f"no model at {path}")
    return storage.local_file(path, folder)


class ModelRunner:
    """One model loaded in this process: uint8 images in, ``heatmap`` / ``boxes`` and per-image seconds out.

    ``.tflite`` files run in the LiteRT interpreter (:class:`raydet.export.tflite.TFLiteModel`; XNNPACK is its default
    CPU delegate), one image per invoke, as on a device, so each invoke's time is one image's latency;
    ``.keras`` files run in tf_keras (``compile=False``), one call per chunk of ~``KERAS_CHUNK_BYTES`` of
    pixels (a call costs milliseconds of overhead, so one image per call would misrepresent it), and each image
    gets its call's time divided by the call's images. ``num_threads`` caps the threads either runtime uses.
    Attributes: ``path``, ``image_size`` (S), ``grid`` (G), ``num_classes`` (C).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        self.path = _local_model(path)
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")
        if not self.path.is_file():
            raise UserFileNotFoundError(f"no model at {self.path}")
        if self.path.suffix not in (".tflite", ".keras"):
            raise UserError(f"{self.path}: not a .keras or .tflite model")
        check_model_file(self.path)
        shapes = self._load_tflite(num_threads) if self.path.suffix == ".tflite" else self._load_keras(num_threads)
        check_outputs(self.path, shapes)
        self.grid, self.num_classes = int(shapes["heatmap"][1]), int(shapes["heatmap"][3])

    def _load_tflite(self, num_threads: int) -> dict[str, tuple]:

        self._tflite = TFLiteModel(str(self.path), num_threads=num_threads, batch_size=1)
        self.image_size = self._tflite.image_size
        self._predict = self._predict_tflite
        return self._tflite.output_shapes

    def _load_keras(self, num_threads: int) -> dict[str, tuple]:

        tf, tf_keras = heavy.tf(), heavy.keras()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already ran something in this process; its thread pools are fixed by now
        self._model = tf_keras.models.load_model(self.path, compile=False)
        self.image_size = int(self._model.input_shape[1])
        self._predict = self._predict_keras
        outputs = self._model.output
        if not isinstance(outputs, dict):
            return {}
        return {name: tuple(-1 if d is None else int(d) for d in t.shape) for name, t in outputs.items()}

    def _predict_tflite(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        parts, seconds = {name: [] for name in OUTPUT_NAMES}, np.zeros(len(images))
        for i in range(len(images)):
            t = time.perf_counter()
            out = self._tflite.predict(images[i : i + 1])
            seconds[i] = time.perf_counter() - t
            for name in OUTPUT_NAMES:
                parts[name].append(out[name])
        return {name: np.concatenate(p).astype(np.float32, copy=False) for name, p in parts.items()}, seconds

    def _predict_keras(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        t = time.perf_counter()
        chunk = max(1, KERAS_CHUNK_BYTES // max(1, images[0].nbytes))
        outs = [
            self._model.predict_on_batch(images[i : i + chunk].astype(np.float32)) for i in range(0, len(images), chunk)
        ]
        seconds = np.full(len(images), (time.perf_counter() - t) / len(images))
        return {name: np.concatenate([np.asarray(o[name], np.float32) for o in outs]) for name in OUTPUT_NAMES}, seconds

    def predict(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``images`` (N, S, S, 3) uint8 RGB 0..255 -> (``{"heatmap": (N, G, G, C), "boxes": (N, G, G, 4)
        [off_x, off_y, w, h]}`` float32, ``seconds`` (N,) float64 model time per image)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"{self.path.name} takes (N, {self.image_size}, {self.image_size}, 3) images, got {images.shape}"
            )
        if len(images) == 0:
            g, c = self.grid, self.num_classes
            return {
                "heatmap": np.zeros((0, g, g, c), np.float32),
                "boxes": np.zeros((0, g, g, 4), np.float32),
            }, np.zeros(0)
        return self._predict(images)
