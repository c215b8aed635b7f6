"""Input pipeline vs training step: can the augmentation and target building feed the step on the same cores?

    .venv/bin/python benchmarks/inputs.py PREP160 [--backbone efficientnet_lite0] [--batch-size 16] [--batches 40]

On one PREP's train split, in this process (no Ray), with raydet's default settings (augmentation on, mosaic on):
  (p) the input pipeline alone: raydet.train.inputs.train_dataset iterated for ``--batches`` batches, nothing trained;
  (s) the training step alone: raydet's compiled detector fitted on one fixed batch repeated (the pipeline cost
      removed), timed over ``--batches`` steps after a warm-up epoch;
  (f) the two together, as training runs them (the step fed by the pipeline).
Prints images/s for each and, on its last line, ``p/s = X   f/s = Y``: p/s >= 3 means the pipeline alone runs at
three times the step's rate; f/s near 1 means the step does not wait for its input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def pipeline_rate(arrays: dict, classes: int, grid: int, batch: int, batches: int, seed: int = 0) -> float:
    """(p): images/s of the training dataset alone, first batch (tracing, thread start) excluded."""
    from raydet.config import AugmentConfig
    from raydet.train.inputs import train_dataset

    ds, _ = train_dataset(arrays, classes, grid, batch, AugmentConfig(), seed)
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def fit_rate(model, ds, batch: int, batches: int) -> tuple[float, float]:
    """(images/s, images per CPU-second of this process) of ``model.fit`` on ``ds`` over ``batches`` steps, after
    one warm-up epoch of the same length. CPU seconds change less than wall time when other jobs share the cores."""
    model.fit(ds, epochs=1, steps_per_epoch=batches, verbose=0)
    t, cpu = time.perf_counter(), time.process_time()
    model.fit(ds, epochs=1, steps_per_epoch=batches, verbose=0)
    return batches * batch / (time.perf_counter() - t), batches * batch / (time.process_time() - cpu)


def build(prep: Path, backbone: str, precision: str = "float32"):
    """raydet's detector for ``prep`` compiled as ``raydet train`` compiles it (defaults of TrainConfig), its
    layers under the Keras mixed-precision policy ``precision`` as a worker builds them."""
    import tf_keras

    from raydet.config import TrainConfig
    from raydet.detector.model import build_model, compile_model, init_backbone
    from raydet.ingest.prep import Prep
    from raydet.train.driver import model_config
    from raydet.train.ema import make_optimizer

    d = TrainConfig(prep="", out="", name="bench", backbone=backbone)
    mcfg = model_config(d, Prep(prep).read_manifest())
    tf_keras.mixed_precision.set_global_policy(precision)
    model = build_model(mcfg)
    tf_keras.mixed_precision.set_global_policy("float32")
    init_backbone(model, mcfg)
    compile_model(
        model,
        make_optimizer(d.lr, d.weight_decay, d.clip_norm, ema=d.ema_decay),
        heatmap_weight=d.heatmap_loss_weight,
        offset_weight=d.offset_loss_weight,
        size_weight=d.size_loss_weight,
        giou_weight=d.giou_loss_weight,
    )
    return model, mcfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prep")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument(
        "--precision", default="float32", help="the training model's Keras policy (raydet train --precision)"
    )
    args = p.parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    from raydet.config import AugmentConfig
    from raydet.detector.model import OUTPUT_STRIDE
    from raydet.ingest.prep import Prep
    from raydet.train.inputs import load_rows, train_dataset

    prep = Path(args.prep).absolute()
    n = Prep(prep).read_manifest()["splits"]["train"]
    arrays = load_rows(str(prep), "train", 0, n)
    model, mcfg = build(prep, args.backbone, args.precision)
    grid, classes, batch = mcfg.image_size // OUTPUT_STRIDE, mcfg.num_classes, args.batch_size

    p_rate = pipeline_rate(arrays, classes, grid, batch, args.batches)
    print(f"(p) input pipeline alone:     {p_rate:8.1f} images/s", flush=True)
    fixed = next(iter(train_dataset(arrays, classes, grid, batch, AugmentConfig(), 1)[0]))
    s_rate, s_cpu = fit_rate(model, tf.data.Dataset.from_tensors(fixed).repeat(), batch, args.batches)
    print(
        f"(s) training step alone:      {s_rate:8.1f} images/s, {s_cpu:.1f} per CPU-second ({args.backbone}, "
        f"{mcfg.image_size} px, batch {batch}, {args.precision}, {os.cpu_count()} cores)",
        flush=True,
    )
    f_rate, _ = fit_rate(model, train_dataset(arrays, classes, grid, batch, AugmentConfig(), 2)[0], batch, args.batches)
    print(f"(f) step fed by the pipeline: {f_rate:8.1f} images/s", flush=True)
    print(f"p/s = {p_rate / s_rate:.2f}   f/s = {f_rate / s_rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
