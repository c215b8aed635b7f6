"""Peak memory of ``raydet train`` with the train split held in memory (before) and streamed from Ray Data (after).

    .venv/bin/python benchmarks/memory.py [--images 12000 3000] [--epochs 1] [--work /tmp/bench-memory]

For each N of ``--images``: the built-in synthetic set (raydet.ingest.synth, JPEG photos in the VOC layout) of N images
at ``--image-size`` px, ``raydet prepare`` at the same size, then ``raydet.train.driver.train`` twice, each in a fresh
process with its own local Ray of 2 CPUs: 1 worker x 1 CPU (the other CPU left to Ray Data), the tiny ``cnn``
(width 4, depth 5), ``--memory-budget-gb`` 1000 (in memory) and 0 (streamed). Measured per run:
- driver: the driver process's peak resident set (``ru_maxrss``);
- object store: the peak of the bytes of the distinct objects in Ray's object store (Ray's public state API,
  ``ray.util.state.list_objects``, polled every second in a thread);
- worker: the Train worker process's peak resident set (``ru_maxrss``, written by a callback at the end of every
  epoch; shared-memory pages of the object store that the worker maps count too).
Prints a table of the peaks, in/stream ratios per N, and the streamed worker's peak for each N (flat when memory
no longer follows the dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

MB = 1e6


def worker_peak(folder: str):
    """A callback factory (raydet.train.driver.train): after every epoch the worker writes its ``ru_maxrss`` in bytes to
    ``folder/worker_rank<r>.json``."""

    def factory(rank: int, world: int, steps: int):
        import resource

        import tf_keras

        class Peak(tf_keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
                Path(folder, f"worker_rank{rank}.json").write_text(json.dumps({"peak_rss": peak}))

        return Peak()

    return factory


class StorePeak(threading.Thread):
    """Polls the object store's use (distinct objects' bytes, ``ray.util.state.list_objects``) until stopped."""

    def __init__(self, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.done = every_s, 0, threading.Event()

    def run(self):
        import ray
        from ray.util.state import list_objects

        address, self.errors = ray.get_runtime_context().gcs_address, []  # this Ray's, not another's on the machine
        while not self.done.is_set():
            try:
                sizes = {
                    o.object_id: o.object_size or 0
                    for o in list_objects(address=address, limit=10_000, raise_on_missing_output=False, timeout=10)
                }
                self.peak = max(self.peak, sum(sizes.values()))
            except Exception as exc:  # a missed sample; the next one counts
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.done.wait(self.every_s)


def measure(prep: Path, out: Path, budget_gb: float, epochs: int) -> dict:
    """One training run in this (fresh) process -> its peaks in bytes and its epoch seconds."""
    import resource

    import ray

    from raydet.cluster.runtime import runtime_env
    from raydet.config import TrainConfig
    from raydet.train.driver import train

    ray.init(address="local", num_cpus=2, runtime_env=runtime_env())  # the state API needs the dashboard
    store = StorePeak()
    store.start()
    cfg = TrainConfig(
        prep=str(prep),
        out=str(out),
        name="run",
        workers=1,
        cpus_per_worker=1.0,
        epochs=epochs,
        batch_size=32,
        width=4,
        depth=5,
        memory_budget_gb=budget_gb,
    )
    summary = train(cfg, callbacks=(worker_peak(str(out)),))
    store.done.set()
    store.join()
    print(f"object store samples that failed: {len(store.errors)} {store.errors[:1]}", flush=True)
    return {
        "driver": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "store": store.peak,
        "worker": json.loads((out / "worker_rank0.json").read_text())["peak_rss"],
        "seconds": [row["seconds"] for row in summary.history],
    }


def make_prep(work: Path, images: int, size: int) -> Path:
    """The synthetic VOC set of ``images`` photos and its PREP at ``size`` px (kept for a rerun)."""
    from raydet.config import SynthConfig
    from raydet.ingest.synth import write_synthetic

    voc, prep = work / f"voc{images}", work / f"prep{images}"
    if (prep / "manifest.json").is_file():
        return prep
    shutil.rmtree(voc, ignore_errors=True)
    write_synthetic(SynthConfig(out=str(voc), images=images, image_size=size))
    raydet = Path(sys.executable).parent / "raydet"
    subprocess.run([str(raydet), "prepare", str(voc), "--out", str(prep), "--image-size", str(size)], check=True)
    return prep


def run_child(prep: Path, out: Path, budget_gb: float, epochs: int) -> dict:
    """``measure`` in a fresh process (its driver's peak is its own), the result read from its RESULT line."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", str(prep), str(out), str(budget_gb), str(epochs)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def table(results: dict) -> str:
    """{(images, mode): measure()} -> the printed tables."""
    lines = ["| images | input | driver MB | object store MB | worker MB | epoch s |", "|---|---|---|---|---|---|"]
    for (n, mode), r in sorted(results.items()):
        lines.append(
            f"| {n} | {mode} | {r['driver'] / MB:.0f} | {r['store'] / MB:.0f} | {r['worker'] / MB:.0f} | "
            f"{r['seconds'][-1]:.1f} |"
        )
    lines += ["", "| images | driver in/stream | object store in/stream | worker in/stream |", "|---|---|---|---|"]
    for n in sorted({n for n, _ in results if (n, "memory") in results and (n, "stream") in results}):
        a, b = results[(n, "memory")], results[(n, "stream")]
        lines.append(
            f"| {n} | " + " | ".join(f"{a[k] / max(b[k], 1):.2f}" for k in ("driver", "store", "worker")) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        prep, out, budget, epochs = sys.argv[2:6]
        print("RESULT " + json.dumps(measure(Path(prep), Path(out), float(budget), int(epochs))), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="+", default=[12000, 3000], help="dataset sizes to run")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["memory", "stream"], choices=["memory", "stream"])
    p.add_argument("--work", default="/tmp/bench-memory", help="datasets, PREP folders and runs (kept for reruns)")
    args = p.parse_args(argv)
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in args.images:
        prep = make_prep(work, n, args.image_size)
        for mode in args.modes:
            budget = {"memory": 1000.0, "stream": 0.0}[mode]
            t0 = time.time()
            results[(n, mode)] = run_child(prep, work / f"run{n}_{mode}", budget, args.epochs)
            print(f"{n} images, {mode}: {json.dumps(results[(n, mode)])} ({time.time() - t0:.0f} s)", flush=True)
    print(table(results))
    for mode in args.modes:
        peaks = ", ".join(f"{n} images {results[(n, mode)]['worker'] / MB:.0f} MB" for n in sorted(args.images))
        print(f"{mode}: worker peak RSS {peaks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
