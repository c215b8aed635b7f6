"""Post-training quantization: a run's float Keras model -> ``RUN/model_<mode>.tflite``.

Modes (``tf.lite.TFLiteConverter.from_keras_model``):
- ``dynamic``: int8 weights, float activations; no calibration data.
- ``float16``: float16 weights (half the size, float compute).
- ``int8``: full integer. Weights and activations int8, ranges calibrated on train images read through
  Ray Data; the input is **uint8** pixels 0..255 (its scale is the calibration images' range, ~1 pixel per
  step); the outputs stay **float32** (the ``heatmap`` scores and ``boxes`` maps, each its own tensor with its
  own quantization scale) so every consumer reads every file the same way.
A ``model_float32.tflite`` (no optimization) is always written beside them: it is the reference that
shows what quantization itself gains, apart from leaving Keras (docs/STACK.md: LiteRT float32 alone is
faster than Keras ``predict`` on a CPU).

Every file keeps the Keras model's names in its ``serving_default`` signature: input ``image``, outputs
``heatmap`` and ``boxes``. :class:`raydet.export.tflite.TFLiteModel` runs any of them; raydet.detector.decode turns the
maps into detections outside the graph (top-k and gathers inside an int8 graph lost every detection in TF's own
CenterNet).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from raydet.cluster import storage
from raydet.cluster.runtime import init_ray
from raydet.config import QuantizeConfig
from raydet.errors import UserError, UserFileNotFoundError
from raydet.export import heavy
from raydet.export.run import KNOWN_MODELS, REFERENCE, Run
from raydet.ingest.prep import Prep
from raydet.ingest.shards import read_split


def describe_run(run_dir: str | os.PathLike) -> str:
    """What a RUN folder (path or URI) holds, for error messages: 'holds config.json, model.keras' or 'does not
    exist'."""
    if storage.kind(run_dir) != "dir":
        return f"{run_dir} does not exist"
    names = sorted({name.split("/")[0] for name in storage.list_files(run_dir)})
    return f"{run_dir} holds {', '.join(names)}" if names else f"{run_dir} is empty"


def require_model(run_dir: str | os.PathLike, name: str = Run.FLOAT_MODEL) -> str:
    """``RUN/name`` (path or URI) if it is a file, else FileNotFoundError naming it and what the run holds."""
    path = Run(run_dir).file(name)
    if storage.kind(path) != "file":
        raise UserFileNotFoundError(f"no model at {path}: {describe_run(run_dir)}")
    return path


def load_float_model(run_dir: str | os.PathLike):
    """The run's float tf-keras model (``RUN/model.keras``), uncompiled."""
    path = require_model(run_dir)
    return heavy.keras().models.load_model(path, compile=False)


def calibration_images(
    prep: str | os.PathLike, limit: int, image_size: int | None = None, address: str | None = None
) -> np.ndarray:
    """Up to ``limit`` train images of a PREP folder, (N, S, S, 3) uint8, read through Ray Data.

    Connects to Ray with :func:`raydet.cluster.runtime.init_ray` (``address``, RAY_ADDRESS or a fresh local Ray). Raises
    as :meth:`raydet.ingest.prep.Prep.read_manifest` for a PREP without a manifest or train shards, and ValueError if
    the images are not ``image_size`` square (a calibration set prepared at another size would calibrate the wrong
    network).
    """
    Prep(prep).read_manifest(splits=("train",))
    train = storage.join(prep, "train")
    init_ray(address)

    ds = read_split(storage.normalize(prep), "train").select_columns(["image"]).limit(limit)
    batch = ds.take_batch(batch_size=limit, batch_format="numpy")
    images = np.asarray(batch["image"], dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{train}: images have shape {images.shape}, expected (N, S, S, 3)")
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise UserError(
            f"{train}: images are {images.shape[1]}x{images.shape[2]} but the model takes "
            f"{image_size}x{image_size}; calibrate with the PREP the run was trained on"
        )
    if not len(images):
        raise UserError(f"{train}: no images to calibrate with")
    return images


def convert(model, mode: str, calibration: np.ndarray | None = None, progress: bool = False) -> bytes:
    """A float tf-keras model -> the bytes of a ``.tflite`` file of ``mode``.

    Args:
        model: input ``image`` (N, S, S, 3) float32 0..255; outputs ``heatmap``, ``boxes``.
        mode: ``float32`` (reference, no optimization), ``dynamic``, ``float16`` or ``int8``.
        calibration: (N, S, S, 3) uint8 images; required for ``int8``, one calibration step each.
    """
    tf = heavy.tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == REFERENCE:
        pass
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 needs calibration images, got none")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration, progress)
        # Integer-only ops: conversion fails rather than silently leaving float ops in the graph.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        # Outputs stay float32: logits and normalized boxes are what every consumer wants, and a
        # dequantize at the end costs nothing measurable.
    else:
        raise ValueError(f"unknown quantization mode {mode!r}; expected float32, dynamic, float16 or int8")
    return converter.convert()


def _representative(images: np.ndarray, progress: bool):
    def gen():
        for i, image in enumerate(images, 1):
            if progress and (i % 50 == 0 or i == len(images)):
                print(f"  calibrating: {i}/{len(images)} images", flush=True)
            yield [image[None].astype(np.float32)]  # the model's input: float32 pixels 0..255

    return gen


def size_rows(run_dir: str | os.PathLike, model=None) -> list[dict]:
    """File sizes of a run's models: [{name, file, bytes, vs_weights, vs_float32}], float first.

    ``vs_weights`` compares with the float model's float32 weights (parameters x 4 bytes; the .keras file
    may also hold optimizer state, which would flatter every ratio); ``vs_float32`` with the unoptimized
    ``.tflite``.
    """
    run = Path(run_dir)
    rows = []
    weights = model.count_params() * 4 if model is not None else None
    float32 = Run(run).model(REFERENCE)
    ref = float32.stat().st_size if float32.is_file() else None
    keras_file = Run(run).model("float")
    if keras_file.is_file():
        rows.append({"name": "float (.keras)", "file": keras_file.name, "bytes": keras_file.stat().st_size})
    for mode in (m for m in KNOWN_MODELS if m != "float"):
        path = Run(run).model(mode)
        if path.is_file():
            rows.append({"name": mode, "file": path.name, "bytes": path.stat().st_size})
    for row in rows:
        row["vs_weights"] = row["bytes"] / weights if weights else None
        row["vs_float32"] = row["bytes"] / ref if ref else None
    return rows


def format_size_table(rows: list[dict], weights_bytes: int | None = None) -> str:
    """The rows of :func:`size_rows` as a Markdown table."""

    def ratio(x):
        return f"{x:.3f}x" if x is not None else "-"

    lines = []
    if weights_bytes:
        lines.append(f"float32 weights: {weights_bytes:,} bytes")
    lines += ["| model | file | bytes | vs float32 weights | vs float32 .tflite |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {r['name']} | {r['file']} | {r['bytes']:,} | {ratio(r['vs_weights'])} | {ratio(r['vs_float32'])} |"
        for r in rows
    ]
    return "\n".join(lines)


def _calibration_source(cfg: QuantizeConfig, run: Path) -> str:
    if cfg.calibration:
        return cfg.calibration
    prep = Run(run).read_config(missing_ok=True).get("prep")
    if not prep:
        raise UserError(
            f"int8 needs calibration images: pass --calibration PREP ({Run(run).file(Run.CONFIG)} names no 'prep')"
        )
    return prep


def quantize(cfg: QuantizeConfig) -> dict[str, str]:
    """``raydet quantize``: write ``RUN/model_<mode>.tflite`` for each mode of ``cfg`` and print sizes.

    ``cfg.run`` may be a URI: the converter works on a local copy (raydet.cluster.storage.local_copy) whose new files
    go back to the run at the end. Returns {mode: path or URI} for the requested modes (the float32 reference
    is written too, not returned).
    """
    require_model(cfg.run)  # before any Ray or TensorFlow start-up
    with storage.local_copy(cfg.run, fetch=[Run.CONFIG, Run.FLOAT_MODEL]) as run:
        prep = _calibration_source(cfg, run) if "int8" in cfg.modes else None
        written = _convert_all(cfg, run, prep)
    return {mode: storage.join(cfg.run, Path(path).name) for mode, path in written.items()}


def _convert_all(cfg: QuantizeConfig, run: Path, prep: str | None) -> dict[str, str]:
    """Every file of ``cfg.modes`` (and the float32 reference when it is older than the model) into the local
    RUN folder ``run``; -> {mode: local path}."""
    keras_path = Run(run).model("float")
    print(f"loading {Run(cfg.run).file(Run.FLOAT_MODEL)}", flush=True)
    model = load_float_model(run)
    image_size = int(model.input_shape[1])
    calibration = None
    if prep is not None:
        print(f"reading up to {cfg.calibration_images} calibration images from {prep}/train (Ray Data)", flush=True)
        calibration = calibration_images(prep, cfg.calibration_images, image_size, cfg.address)
        print(f"  {len(calibration)} images", flush=True)

    written = {}
    reference = Run(run).model(REFERENCE)
    todo = list(cfg.modes)
    if not reference.is_file() or reference.stat().st_mtime < keras_path.stat().st_mtime:
        todo.insert(0, REFERENCE)
    for mode in todo:
        start = time.perf_counter()
        print(f"converting {mode} ...", flush=True)
        data = convert(model, mode, calibration, progress=True)
        path = Run(run).model(mode)
        path.write_bytes(data)
        print(
            f"  wrote {storage.join(cfg.run, path.name)} ({len(data):,} bytes, {time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        if mode != REFERENCE:
            written[mode] = str(path)

    weights = model.count_params() * 4
    print(format_size_table(size_rows(run, model), weights), flush=True)
    return written
