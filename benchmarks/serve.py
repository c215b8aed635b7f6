"""HTTP serving speed of ``raydet serve`` on 127.0.0.1 against the same images predicted in this process, printed
as ratios measured in the same process (so the same machine load applies to all).

    python benchmarks/serve.py RUNS/NAME --images DIR [--model int8] [--requests 2000] [--clients 1,8,32]

1. Baseline: the images (every JPEG/PNG under DIR, cycled to ``--requests``) decoded and predicted one by one in
   this process (:func:`raydet.ingest.images.decode_resize` + :func:`raydet.evaluate.predict.detect` on a
   :class:`raydet.export.runner.ModelRunner` of 1 thread): what a replica does per request, without HTTP, Serve or
   batching.
2. The Serve application of ``raydet serve`` (raydet.serve.app) on a local Ray of ``--cpus`` CPUs, in three
   layouts: 1 replica batched (``--max-batch-size``), 2 replicas batched, 1 replica with max_batch_size=1. Each
   at 1, 8 and 32 concurrent clients (threads of this process, each on its own keep-alive HTTP/1.1 connection,
   POSTing the image bytes): ``--requests`` requests per level, then it stops. Requests/s = requests / wall
   time of the level; latency per request as the client sees it (p50/p95/p99); errors = answers other than 200
   or detections other than the baseline's for that image (:func:`same_detections`; must be 0).

The last line holds the ratios: batched against batch size 1 and 2 replicas against 1, at each client count,
and the best Serve layout against the in-process baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

LAYOUTS = (("1 replica, batched", 1, None), ("2 replicas, batched", 2, None), ("1 replica, batch 1", 1, 1))


def load_images(folder: Path, n: int) -> list[tuple[str, bytes]]:
    """Every .jpg/.jpeg/.png under ``folder`` (sorted), cycled to ``n`` -> ``[(name, bytes)]``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no .jpg/.png images under {folder}")
    data = [(p.name, p.read_bytes()) for p in files]
    return [data[i % len(data)] for i in range(n)]


def in_process(run: Path, model: str, images: list[tuple[str, bytes]]) -> tuple[dict, dict]:
    """The baseline (module docstring, 1.) -> (figures, ``{name: detections}`` to check the answers against)."""
    from raydet.evaluate.predict import detect, run_classes
    from raydet.export.run import Run
    from raydet.export.runner import ModelRunner
    from raydet.ingest.images import decode_resize

    runner, classes = ModelRunner(Run(run).model(model), num_threads=1), run_classes(run)
    s = runner.image_size
    runner.predict(np.zeros((1, s, s, 3), np.uint8))
    expected, latencies = {}, []
    start = time.perf_counter()
    for name, data in images:
        t = time.perf_counter()
        pixels, width, height = decode_resize(data, s)
        (dets,), _ = detect(runner, pixels[None], [(width, height)], classes, 0.3)
        latencies.append(time.perf_counter() - t)
        expected[name] = dets
    return summary(len(images), time.perf_counter() - start, latencies, 0), expected


def summary(requests: int, seconds: float, latencies: list[float], errors: int) -> dict:
    ms = np.asarray(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "requests": requests,
        "seconds": seconds,
        "per_s": requests / seconds,
        "p50": np.percentile(ms, 50),
        "p95": np.percentile(ms, 95),
        "p99": np.percentile(ms, 99),
        "errors": errors,
    }


def load(port: int, images: list[tuple[str, bytes]], clients: int, expected: dict) -> dict:
    """``clients`` threads send ``images`` (split between them) to POST /detect -> figures (module docstring)."""
    latencies, errors, lock = [], [], threading.Lock()

    def client(part: list[tuple[str, bytes]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], []
        for name, data in part:
            t = time.perf_counter()
            try:
                conn.request("POST", "/detect", body=data, headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                bad.append(f"{name}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            mine.append(time.perf_counter() - t)
            if resp.status != 200:
                bad.append(f"{name}: {resp.status} {body[:200]!r}")
            elif not same_detections(json.loads(body)["detections"], expected[name]):
                bad.append(f"{name}: detections differ from the in-process ones")
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(images[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    figures = summary(len(images), time.perf_counter() - start, latencies, len(errors))
    figures["first_errors"] = errors[:3]
    return figures


def same_detections(got: list[dict], want: list[dict]) -> bool:
    """The same detections: classes in the same order, scores within 1e-4, boxes within 0.01 px. A .tflite model
    (one invoke per image) gives identical floats; Keras computes a batch of images with other kernel blockings
    than one image, which moves the last digits (raydet predict's own chunks of 64 do the same)."""
    return len(got) == len(want) and all(
        g["class"] == w["class"] and abs(g["score"] - w["score"]) <= 1e-4 and np.allclose(g["box"], w["box"], atol=0.01)
        for g, w in zip(got, want, strict=True)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_layouts(args, images, expected, port: int) -> dict:
    """Every layout of LAYOUTS at every client count -> ``{(layout, clients): figures}``."""
    from ray import serve

    from raydet.config import ServeConfig
    from raydet.serve.app import application

    results = {}
    for label, replicas, batch in LAYOUTS:
        cfg = ServeConfig(
            run=str(args.run),
            model=args.model,
            replicas=replicas,
            threads=1,
            max_batch_size=batch or args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
        )
        serve.run(application(cfg), name="bench", route_prefix="/")
        load(port, images[:64], 8, expected)  # warm-up: connections, every replica's first batches
        for clients in args.clients:
            r = results[label, clients] = load(port, images, clients, expected)
            print(
                f"  {label:20s} {clients:2d} clients: {r['per_s']:7.1f} req/s, p50 {r['p50']:6.1f} ms, "
                f"p95 {r['p95']:6.1f} ms, p99 {r['p99']:6.1f} ms, errors {r['errors']}"
                + (f" ({r['first_errors']})" if r["errors"] else ""),
                flush=True,
            )
        serve.delete("bench")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="RUN folder (a local path)")
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG images to send")
    parser.add_argument("--model", default="int8")
    parser.add_argument("--requests", type=int, default=2000, help="requests per client level")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, a comma list")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    import ray
    from ray import serve

    from raydet.cluster.console import log_path, quiet_stderr
    from raydet.cluster.runtime import runtime_env, use_legacy_keras

    use_legacy_keras()
    images = load_images(args.images, args.requests)
    print(
        f"{args.requests} requests per level ({len({n for n, _ in images})} distinct images of {args.images}), "
        f"model {args.model} of {args.run}, {args.cpus} CPUs, {os.cpu_count()} cores",
        flush=True,
    )
    with quiet_stderr(log_path("bench-serve")):
        base, expected = in_process(args.run, args.model, images)
        print(
            f"  {'in process, 1 thread':20s}  1 client : {base['per_s']:7.1f} img/s, p50 {base['p50']:6.1f} ms, "
            f"p95 {base['p95']:6.1f} ms, p99 {base['p99']:6.1f} ms",
            flush=True,
        )
        port = free_port()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, runtime_env=runtime_env())
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            results = measure_layouts(args, images, expected, port)
        finally:
            ray.shutdown()  # Serve goes with it (serve.shutdown() only adds the controller's retry warnings)
    report(args, base, results)


def report(args, base: dict, results: dict) -> None:
    """The table of every figure, then the ratios on the last line."""
    print("\n| layout | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| in process (1 thread, no HTTP) | 1 | {base['per_s']:.1f} | {base['p50']:.1f} | {base['p95']:.1f} | "
        f"{base['p99']:.1f} | - |"
    )
    for (label, clients), r in results.items():
        print(
            f"| {label} | {clients} | {r['per_s']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
            f"{r['errors']} |"
        )
    ratios = []
    for clients in args.clients:
        batched, single = results["1 replica, batched", clients], results["1 replica, batch 1", clients]
        two = results["2 replicas, batched", clients]
        ratios.append(
            f"{clients} clients: batched/batch-1 {batched['per_s'] / single['per_s']:.2f}x, "
            f"2/1 replicas {two['per_s'] / batched['per_s']:.2f}x"
        )
    best = max(results.values(), key=lambda r: r["per_s"])
    total_errors = sum(r["errors"] for r in results.values())
    print(
        f"\nratios: {'; '.join(ratios)}; best Serve / in-process {best['per_s'] / base['per_s']:.2f}x; "
        f"errors {total_errors}"
    )


if __name__ == "__main__":
    main()
