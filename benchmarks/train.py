"""Training throughput: plain single-process tf_keras ``fit`` vs raydet (Ray Train) with 1 and 2 workers.

    .venv/bin/python benchmarks/train.py PREP160 --backbone efficientnet_lite0 --batch-size 16
    .venv/bin/python benchmarks/train.py PREP160 --backbone cnn --batch-size 16

On the same prepared data, the same model (raydet.detector.model: backbone, neck, heads), loss, optimizer (AdamW with
raydet's EMA of the weights), input pipeline (raydet.train.inputs.train_dataset / val_dataset) and augmentation:
  (a) plain ``model.fit`` in this process, all cores, validation loss on the epochs raydet validates;
  (b) ``raydet.train.driver.train`` with 1 worker holding every CPU;
  (c) ``raydet.train.driver.train`` with 2 workers of 1 CPU each.
raydet runs with its **default** checkpoint and validation cadence: a default run on this PREP (``--epochs`` left
out: about 1,000 optimizer steps) validates (loss and AP) and checkpoints every ``k`` epochs, 10 times in all; the
benchmark trains ``k`` epochs (at least 3) with that cadence, so epochs 2..k hold one validation and checkpoint,
as each stretch of a default run does (``--epochs`` overrides; ``--checkpoint-every`` as ``raydet train``).
Steady state: images/s = training images of epochs 2..E / (end of epoch E - end of epoch 1), start-up and the whole
first epoch excluded, everything raydet adds between epochs included. End to end: images of all epochs / the
whole call (for raydet Ray's start, timed once at the beginning, is added: every command pays it).
Prints each, and on its last line ``b/a = X   c/a = Y`` (steady state). ``--rounds R`` measures (a), (b), (c) R times
and prints the median of the rounds' ratios, each round's raydet runs against that round's plain ``fit``: this
machine's speed drifts by 20-30% over minutes, and one round's ratios moved with it (steady b/a 0.84-1.35).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path


def steady_images_per_s(end_times: list[float], images_per_epoch: int) -> float:
    """(E - 1) epochs of images over the time from the end of epoch 1 to the end of epoch E."""
    if len(end_times) < 2:
        raise ValueError(f"need at least 2 epochs to exclude the first, got {len(end_times)}")
    return images_per_epoch * (len(end_times) - 1) / (end_times[-1] - end_times[0])


def default_cadence(prep: Path, batch: int) -> tuple[int, int]:
    """(epochs of a default run on ``prep`` at ``batch``, its checkpoint/validation interval ``k``)."""
    from raydet.ingest.prep import Prep
    from raydet.train.schedule import auto_epochs, checkpoint_every

    epochs = auto_epochs(Prep(prep).read_manifest()["splits"]["train"] // batch)
    return epochs, checkpoint_every(epochs)


def plain_fit(prep: Path, epochs: int, every: int, batch: int, backbone: str) -> tuple[float, float, int]:
    """(a): returns (steady images/s, end-to-end images/s, images per epoch)."""
    import tf_keras

    from raydet.config import AugmentConfig, TrainConfig
    from raydet.detector.model import OUTPUT_STRIDE, build_model, compile_model, freeze_backbone_bn, init_backbone
    from raydet.ingest.prep import Prep
    from raydet.train.driver import model_config
    from raydet.train.ema import make_optimizer
    from raydet.train.inputs import load_rows, train_dataset, val_dataset
    from raydet.train.schedule import is_checkpoint_epoch

    start = time.perf_counter()
    manifest = Prep(prep).read_manifest()
    train_arrays, test_arrays = load_rows(prep, "train"), load_rows(prep, "test")
    steps = len(train_arrays["image"]) // batch
    d = TrainConfig(prep="", out="", name="plain", backbone=backbone)  # raydet's optimizer, EMA, clipping, losses
    mcfg = model_config(d, manifest)
    model = build_model(mcfg)
    init_backbone(model, mcfg)
    if d.freeze_bn:
        freeze_backbone_bn(model, mcfg)
    compile_model(
        model,
        make_optimizer(d.lr, d.weight_decay, d.clip_norm, ema=d.ema_decay),
        heatmap_weight=d.heatmap_loss_weight,
        offset_weight=d.offset_loss_weight,
        size_weight=d.size_loss_weight,
        giou_weight=d.giou_loss_weight,
    )
    grid, classes = mcfg.image_size // OUTPUT_STRIDE, mcfg.num_classes
    val_ds, val_steps = val_dataset([test_arrays], classes, grid, mcfg.image_size, batch)
    ends: list[float] = []
    stamp = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(time.time()))
    train_ds, _ = train_dataset(train_arrays, classes, grid, batch, AugmentConfig(), 0)
    due = [e for e in range(1, epochs + 1) if is_checkpoint_epoch(e, epochs, every)]
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        validation_steps=val_steps,
        validation_freq=due,
        callbacks=[stamp],
        verbose=0,
    )
    whole = time.perf_counter() - start
    return steady_images_per_s(ends, steps * batch), epochs * steps * batch / whole, steps * batch


def raydet_fit(
    prep: Path,
    out: Path,
    name: str,
    workers: int,
    cpus: float,
    epochs: int,
    every: int,
    batch: int,
    backbone: str,
    ray_start: float,
) -> tuple[float, float]:
    """(b)/(c): (steady images/s from the run's history (``end_time`` of each epoch), end-to-end images/s: all
    epochs' images over the whole ``train`` call plus ``ray_start`` seconds)."""
    from raydet.config import TrainConfig
    from raydet.ingest.prep import Prep
    from raydet.train.driver import train

    shutil.rmtree(out / name, ignore_errors=True)
    cfg = TrainConfig(
        prep=str(prep),
        out=str(out),
        name=name,
        workers=workers,
        cpus_per_worker=cpus,
        epochs=epochs,
        checkpoint_every=every,
        batch_size=batch,
        backbone=backbone,
    )
    start = time.perf_counter()
    summary = train(cfg)
    whole = time.perf_counter() - start
    # From the manifest: a lazy read_split(...).count() prunes the image column, which Ray 2.60's
    # tensor_column_schema cast then fails to find (KeyError 'Field "image" does not exist').
    rows = Prep(prep).read_manifest()["splits"]["train"]
    local = batch // workers
    images = (rows // workers) // local * local * workers  # steps per epoch x global batch, as train() runs it
    return steady_images_per_s([row["end_time"] for row in summary.history], images), epochs * images / (
        whole + ray_start
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prep")
    p.add_argument("--epochs", type=int, default=None, help="default: k, the default run's checkpoint interval")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default: k (raydet's default cadence)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--backbone", default="efficientnet_lite0", help="cnn or efficientnet_lite0 (raydet train --backbone)"
    )
    p.add_argument("--out", default="/tmp/bench-train")
    p.add_argument(
        "--rounds", type=int, default=1, help="(a), (b), (c) this many times; the ratios are the medians of the rounds'"
    )
    args = p.parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from raydet.cluster.console import log_path, quiet_stderr

    prep, out = Path(args.prep).absolute(), Path(args.out).absolute()
    default_epochs, k = default_cadence(prep, args.batch_size)
    every = args.checkpoint_every or k
    epochs = args.epochs or max(every, 3)
    print(
        f"a default run here: {default_epochs} epochs, validation + checkpoint every {k}; benchmark: {epochs} "
        f"epochs, every {every}",
        flush=True,
    )
    # as a raydet command: the benchmark's and raydet's lines here, Ray's and TensorFlow's in a log file
    with quiet_stderr(log_path("bench-train")):
        rounds = _measure(prep, out, epochs, every, args.batch_size, args.backbone, args.rounds)
    ratios = {
        (kind, label): statistics.median(fits[label][kind] / fits["a"][kind] for fits in rounds)
        for kind in (0, 1)
        for label in ("b", "c")
    }
    of = f", median of {len(rounds)} rounds" if len(rounds) > 1 else ""
    print(f"end to end (each against its own round's (a){of}): b/a = {ratios[1, 'b']:.3f}   c/a = {ratios[1, 'c']:.3f}")
    print(
        f"backbone {args.backbone}, steady state (epochs 2..{epochs}{of}): "
        f"b/a = {ratios[0, 'b']:.3f}   c/a = {ratios[0, 'c']:.3f}"
    )
    return 0


def _measure(prep: Path, out: Path, epochs: int, every: int, batch: int, backbone: str, rounds: int) -> list[dict]:
    """Ray started here, (a), (b) and (c) measured and printed ``rounds`` times (on a shared machine the speed drifts
    over minutes, so each round's raydet runs are compared with the plain ``fit`` just before them), Ray stopped ->
    one {label: (steady, end to end)} per round."""
    import ray

    from raydet.cluster.runtime import runtime_env

    cpus = os.cpu_count() or 2
    t = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env())
    ray_start = time.perf_counter() - t
    try:
        return [_round(prep, out, epochs, every, batch, backbone, cpus, ray_start) for _ in range(rounds)]
    finally:
        ray.shutdown()


def _round(prep: Path, out: Path, epochs: int, every: int, batch: int, backbone: str, cpus: int, ray_start: float):
    """(a), then (b) and (c), each printed -> {label: (steady, end to end)}."""
    a, a_e2e, per_epoch = plain_fit(prep, epochs, every, batch, backbone)
    print(
        f"(a) plain tf_keras fit, 1 process, {cpus} threads: {a:8.1f} images/s steady, {a_e2e:6.1f} end to end "
        f"({per_epoch} images/epoch)",
        flush=True,
    )
    fits = {"a": (a, a_e2e)}
    for label, name, workers, per in (("b", "bench1", 1, float(cpus)), ("c", "bench2", 2, 1.0)):
        steady, e2e = raydet_fit(prep, out, name, workers, per, epochs, every, batch, backbone, ray_start)
        fits[label] = (steady, e2e)
        print(
            f"({label}) raydet, {workers} worker(s) x {per:g} CPUs:   {steady:8.1f} images/s steady, "
            f"{e2e:6.1f} end to end (Ray start {ray_start:.1f} s included)",
            flush=True,
        )
    return fits


if __name__ == "__main__":
    sys.exit(main())
