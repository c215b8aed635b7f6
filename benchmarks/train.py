"""Training throughput: plain single-process tf_keras ``fit`` vs raydet (Ray Train) with 1 and 2 workers.

    .venv/bin/python benchmarks/train.py PREP [--epochs 4] [--batch-size 64] [--width 16] [--out /tmp/bench-train]

On the same prepared data, the same model, loss, input pipeline (raydet.train.train_dataset /
test_dataset), augmentation and per-epoch validation:
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


def plain_fit(prep: Path, epochs: int, batch: int, width: int) -> tuple[float, int]:
    """(a): returns (images/s, images per epoch)."""
    import tf_keras

    from raydet.config import ModelConfig, TrainConfig
    from raydet.data import read_split
    from raydet.model import build_model, compile_model
    from raydet.train import load_split, make_optimizer, read_manifest, test_dataset, train_dataset

    manifest = read_manifest(prep)
    train_arrays = load_split(read_split(prep, "train"))
    test_arrays = load_split(read_split(prep, "test"))
    steps = len(train_arrays["image"]) // batch
    model = build_model(ModelConfig(num_classes=len(manifest["classes"]), image_size=manifest["image_size"], width=width))
    d = TrainConfig(prep="", out="", name="plain")  # raydet's defaults: the same optimizer, clipping and loss weights
    compile_model(model, make_optimizer(d.lr, d.weight_decay, d.clip_norm), d.box_loss_weight, d.giou_loss_weight)
    val_ds, val_steps = test_dataset(test_arrays, batch, 0, 1)
    ends: list[float] = []
    stamp = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(time.time()))
    model.fit(train_dataset(train_arrays, batch, True, 0), epochs=epochs, steps_per_epoch=steps,
              validation_data=val_ds, validation_steps=val_steps, callbacks=[stamp], verbose=0)
    return steady_images_per_s(ends, steps * batch), steps * batch


def raydet_fit(prep: Path, out: Path, name: str, workers: int, cpus: float, epochs: int, batch: int, width: int) -> float:
    """(b)/(c): images/s from the run's history (``end_time`` of each epoch)."""
    from raydet.config import TrainConfig
    from raydet.train import train

    shutil.rmtree(out / name, ignore_errors=True)
    cfg = TrainConfig(prep=str(prep), out=str(out), name=name, workers=workers, cpus_per_worker=cpus,
                      epochs=epochs, batch_size=batch, width=width)
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
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--out", default="/tmp/bench-train")
    args = p.parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray

    from raydet.runtime import runtime_env

    prep, out = Path(args.prep).absolute(), Path(args.out).absolute()
    cpus = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env())
    try:
        a, per_epoch = plain_fit(prep, args.epochs, args.batch_size, args.width)
        print(f"(a) plain tf_keras fit, 1 process, {cpus} threads: {a:8.1f} images/s ({per_epoch} images/epoch)", flush=True)
        b = raydet_fit(prep, out, "bench1", 1, float(cpus), args.epochs, args.batch_size, args.width)
        print(f"(b) raydet, 1 worker x {cpus} CPUs:                {b:8.1f} images/s", flush=True)
        c = raydet_fit(prep, out, "bench2", 2, 1.0, args.epochs, args.batch_size, args.width)
        print(f"(c) raydet, 2 workers x 1 CPU:                 {c:8.1f} images/s", flush=True)
    finally:
        ray.shutdown()
    print(f"b/a = {b / a:.3f}   c/a = {c / a:.3f}   (steady state: epochs 2..{args.epochs}; epoch 1 and start-up excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
