"""Training throughput: plain single-process tf_keras ``fit`` vs raydet (Ray Train) with 1 and 2 workers.

    .venv/bin/python benchmarks/train.py PREP [--epochs 4] [--batch-size 64] [--backbone cnn] [--out /tmp/bench-train]
    .venv/bin/python benchmarks/train.py PREP160 --backbone efficientnet_lite0 --batch-size 16

On the same prepared data, the same model (raydet.model: backbone, neck, heads), loss, input pipeline
(raydet.inputs.train_dataset / val_dataset), augmentation and per-epoch validation loss:
  (a) plain ``model.fit`` in this process, all cores;
  (b) ``raydet.train.train`` with 1 worker holding every CPU;
  (c) ``raydet.train.train`` with 2 workers of 1 CPU each.
Steady state: images/s = training images of epochs 2..E / (end of epoch E - end of epoch 1), so start-up
(Ray and worker start, data loading, graph tracing, the whole first epoch) is excluded, while everything
Ray Train adds between epochs (checkpoint, report) is included. Prints b/a and c/a.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path


def steady_images_per_s(end_times: list[float], images_per_epoch: int) -> float:
    """(E - 1) epochs of images over the time from the end of epoch 1 to the end of epoch E."""
    if len(end_times) < 2:
        raise ValueError(f"need at least 2 epochs to exclude the first, got {len(end_times)}")
    return images_per_epoch * (len(end_times) - 1) / (end_times[-1] - end_times[0])


def plain_fit(prep: Path, epochs: int, batch: int, backbone: str) -> tuple[float, int]:
    """(a): returns (images/s, images per epoch)."""
    import tf_keras

    from raydet.config import AugmentConfig, TrainConfig
    from raydet.inputs import load_split, train_dataset, val_dataset
    from raydet.model import OUTPUT_STRIDE, build_model, compile_model, freeze_backbone_bn, init_backbone
    from raydet.shards import read_split
    from raydet.train import model_config, read_manifest
    from raydet.ema import make_optimizer

    manifest = read_manifest(prep)
    train_arrays = load_split(read_split(prep, "train").materialize())
    test_arrays = load_split(read_split(prep, "test").materialize())
    steps = len(train_arrays["image"]) // batch
    d = TrainConfig(prep="", out="", name="plain", backbone=backbone)  # raydet's optimizer, clipping, loss weights
    mcfg = model_config(d, manifest)
    model = build_model(mcfg)
    init_backbone(model, mcfg)
    if d.freeze_bn:
        freeze_backbone_bn(model, mcfg)
    compile_model(model, make_optimizer(d.lr, d.weight_decay, d.clip_norm), heatmap_weight=d.heatmap_loss_weight,
                  offset_weight=d.offset_loss_weight, size_weight=d.size_loss_weight, giou_weight=d.giou_loss_weight)
    grid, classes = mcfg.image_size // OUTPUT_STRIDE, mcfg.num_classes
    val_ds, val_steps = val_dataset([test_arrays], classes, grid, mcfg.image_size, batch)
    ends: list[float] = []
    stamp = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(time.time()))
    train_ds, _ = train_dataset(train_arrays, classes, grid, batch, AugmentConfig(), 0)
    model.fit(train_ds, epochs=epochs, steps_per_epoch=steps,
              validation_data=val_ds, validation_steps=val_steps, callbacks=[stamp], verbose=0)
    return steady_images_per_s(ends, steps * batch), steps * batch


def raydet_fit(prep: Path, out: Path, name: str, workers: int, cpus: float, epochs: int, batch: int,
               backbone: str) -> float:
    """(b)/(c): images/s from the run's history (``end_time`` of each epoch)."""
    from raydet.config import TrainConfig
    from raydet.train import train

    shutil.rmtree(out / name, ignore_errors=True)
    cfg = TrainConfig(prep=str(prep), out=str(out), name=name, workers=workers, cpus_per_worker=cpus,
                      epochs=epochs, batch_size=batch, backbone=backbone)
    summary = train(cfg)
    from raydet.train import read_manifest

    # From the manifest: a lazy read_split(...).count() prunes the image column, which Ray 2.60's
    # tensor_column_schema cast then fails to find (KeyError 'Field "image" does not exist').
    rows = read_manifest(prep)["splits"]["train"]
    local = batch // workers
    images = (rows // workers) // local * local * workers  # steps per epoch x global batch, as train() runs it
    return steady_images_per_s([row["end_time"] for row in summary.history], images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prep")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backbone", default="cnn", help="cnn or efficientnet_lite0 (raydet train --backbone)")
    p.add_argument("--out", default="/tmp/bench-train")
    args = p.parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray

    from raydet.runtime import runtime_env

    prep, out = Path(args.prep).absolute(), Path(args.out).absolute()
    cpus = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env())
    try:
        a, per_epoch = plain_fit(prep, args.epochs, args.batch_size, args.backbone)
        print(f"(a) plain tf_keras fit, 1 process, {cpus} threads: {a:8.1f} images/s ({per_epoch} images/epoch)", flush=True)
        b = raydet_fit(prep, out, "bench1", 1, float(cpus), args.epochs, args.batch_size, args.backbone)
        print(f"(b) raydet, 1 worker x {cpus} CPUs:                {b:8.1f} images/s", flush=True)
        c = raydet_fit(prep, out, "bench2", 2, 1.0, args.epochs, args.batch_size, args.backbone)
        print(f"(c) raydet, 2 workers x 1 CPU:                 {c:8.1f} images/s", flush=True)
    finally:
        ray.shutdown()
    print(f"backbone {args.backbone}: b/a = {b / a:.3f}   c/a = {c / a:.3f}   (steady state: epochs 2..{args.epochs}; epoch 1 and start-up excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
