"""Inference speed in a Ray actor pool: images/s of the float Keras model vs each .tflite model of a run, and
1 vs 2 actors, printed as ratios measured in the same process (so the same machine load applies to all).

    python benchmarks/infer.py RUNS/NAME --data PREP [--split train] [--repeat 10] [--batch-size B] [--rounds 3]

Each configuration maps the same materialized images (read once) through ``map_batches`` with an actor pool,
each actor loading its model once and the images cut into calls as ``raydet evaluate`` cuts them
(raydet.export.runner.ModelRunner, raydet.export.runner.batch_plan; ``--batch-size`` as in evaluate), but the actors
only predict and decode (raydet.detector.decode.decode, as evaluate: top 100 peaks with score >= 0.01, box NMS,
then pixel boxes): the matching and metric bookkeeping of an evaluation are left out,
so the figures are the models' speed. images/s = images / (last batch's end - first batch's start) inside the
actors; the pool starts handing out batches only when all its actors have loaded their model.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


class SpeedActor:
    """Loads one model once; per batch: predict + decode, returns the image count and the batch's start/end."""

    def __init__(self, model_path: str, num_threads: int):
        from raydet.export.runner import ModelRunner

        self.runner = ModelRunner(model_path, num_threads)
        s = self.runner.image_size
        self.runner.predict(np.zeros((1, s, s, 3), np.uint8))  # warm-up outside the timed batches

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raydet.detector.decode import decode, to_pixels

        t_start = time.time()
        outputs, _ = self.runner.predict(batch["image"])
        decoded = decode(outputs["heatmap"], outputs["boxes"], top_k=100, score_threshold=0.01)
        for det, width, height in zip(decoded, batch["width"], batch["height"], strict=True):
            to_pixels(det.boxes, float(width), float(height))
        return {
            "images": np.array([len(decoded)]),
            "t_start": np.array([t_start]),
            "t_end": np.array([time.time()]),
            "pid": np.array([os.getpid()]),
        }


def measure(ds, path: Path, actors: int, threads: int, batch_size: int, rounds: int) -> dict:
    """images/s of ``path`` over ``ds`` with ``actors`` actors of ``threads`` threads (and CPUs) each: the
    median of ``rounds`` passes, each in a fresh pool (a shared machine's load comes and goes)."""
    passes = sorted(
        (_one_pass(ds, path, actors, threads, batch_size) for _ in range(rounds)), key=lambda r: r["images_per_s"]
    )
    return passes[len(passes) // 2]


def _one_pass(ds, path: Path, actors: int, threads: int, batch_size: int) -> dict:
    import ray

    mapped = ds.map_batches(
        SpeedActor,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        num_cpus=threads,
        fn_constructor_kwargs={"model_path": str(path), "num_threads": threads},
    )
    mapped.context.wait_for_min_actors_s = 600  # all actors loaded before the first batch (see raydet.evaluate.pool)
    rows = mapped.take_all()
    images = int(sum(r["images"] for r in rows))
    span = max(r["t_end"] for r in rows) - min(r["t_start"] for r in rows)
    return {
        "images": images,
        "seconds": span,
        "images_per_s": images / span,
        "actors_used": len({r["pid"] for r in rows}),
    }


def model_files(run: Path) -> dict[str, Path]:
    """Every model of the run that exists: the float Keras model, the float32 reference .tflite and the
    quantized ones (raydet.export.run.Run's names)."""
    from raydet.export.run import KNOWN_MODELS, Run
    from raydet.export.runner import available_models

    labels = {"float": "float (keras)", "float32": "float32 tflite"}
    return {labels.get(n, n): Run(run).model(n) for n in available_models(run, KNOWN_MODELS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="RUN folder (model.keras and model_*.tflite)")
    parser.add_argument("--data", type=Path, required=True, help="PREP folder")
    parser.add_argument("--split", default="train", help="split to read (train: the larger one)")
    parser.add_argument(
        "--repeat", type=int, default=10, help="pass over the split this many times (longer runs, less noise)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per actor call (default: as raydet evaluate)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="passes per configuration; the median is reported")
    parser.add_argument("--address", default=None, help="Ray cluster (default: a fresh local Ray)")
    args = parser.parse_args(argv)
    if min(args.repeat, args.rounds) < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error(
            f"--repeat, --batch-size and --rounds must be positive, got {args.repeat}, {args.batch_size}, {args.rounds}"
        )
    models = model_files(args.run)
    if "float (keras)" not in models:
        parser.error(f"{args.run} has no model.keras (found: {', '.join(models) or 'nothing'})")

    import json

    import ray

    from raydet.cluster.runtime import init_ray
    from raydet.export.runner import batch_plan, check_run
    from raydet.ingest.shards import read_split

    check_run(args.run)  # a RUN that is not raydet's is refused before Ray starts
    image_size = int(json.loads((args.data / "manifest.json").read_text())["image_size"])
    init_ray(args.address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ds = read_split(args.data, args.split).materialize()
    if args.repeat > 1:
        ds = ds.union(*[ds] * (args.repeat - 1))
    n = ds.count()
    blocks, batch_size = batch_plan(n, image_size, 2, args.batch_size)
    ds = ds.repartition(blocks).materialize()  # one block per actor call
    print(
        f"{n} images ({args.split} x {args.repeat}) of {args.data}, {batch_size} per call, {cpus} CPUs "
        f"in Ray, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    # 1. every model, 1 actor x 1 thread; 2. float and int8 with 2 actors x 1 thread and 1 actor x 2 threads
    runs: list[tuple[str, int, int, dict]] = []
    for name, path in models.items():
        runs.append((name, 1, 1, measure(ds, path, 1, 1, batch_size, args.rounds)))
        print(f"  {name:15s} 1 actor  x 1 thread : {runs[-1][3]['images_per_s']:8.1f} images/s", flush=True)
    if cpus >= 2:
        for name in ("float (keras)", "int8"):
            if name not in models:
                continue
            for actors, threads in ((2, 1), (1, 2)):
                runs.append(
                    (name, actors, threads, measure(ds, models[name], actors, threads, batch_size, args.rounds))
                )
                print(
                    f"  {name:15s} {actors} actor{'s' if actors > 1 else ' '} x {threads} thread"
                    f"{'s' if threads > 1 else ' '}: {runs[-1][3]['images_per_s']:8.1f} images/s",
                    flush=True,
                )

    # 3. the table and the ratios
    base = {name: r["images_per_s"] for name, a, t, r in runs if a == 1 and t == 1}
    print("\n| model | actors x threads | images | seconds | images/s | vs float (keras), same pool | vs 1 actor |")
    print("|---|---|---|---|---|---|---|")
    float_by_pool = {(a, t): r["images_per_s"] for name, a, t, r in runs if name == "float (keras)"}
    for name, a, t, r in runs:
        vs_float = r["images_per_s"] / float_by_pool[(a, t)] if (a, t) in float_by_pool else float("nan")
        print(
            f"| {name} | {a} x {t} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} | "
            f"{vs_float:.2f}x | {r['images_per_s'] / base[name]:.2f}x |"
        )
    sizes = {name: path.stat().st_size for name, path in models.items()}
    print(
        "\nsizes: " + ", ".join(f"{k} {v / 1e3:.1f} kB ({v / sizes['float (keras)']:.2f}x)" for k, v in sizes.items())
    )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
