"""What quantization costs: AP50 and size of a run's float model against each of its .tflite files.

    python benchmarks/quantize.py RUN PREP [--limit N]

Reads PREP's test split through Ray Data, predicts one detection per image with every model the run has
(float Keras, then model_<mode>.tflite for float32, dynamic, float16, int8, qat), and prints VOC AP@0.5
(raydet.detector.metrics), class accuracy, file size, and each model's AP50 change and size ratio against float.
Speed is benchmarks/infer.py's job. Issue 4's bar: int8 <= 0.3x float's size; int8 and qat lose <= 0.02 AP50.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def read_test(prep: str, limit: int | None):
    """PREP/test -> images (N, S, S, 3) uint8, per-image ground truth [(boxes (G, 4) xyxy normalized, labels (G,))]."""

    from raydet.ingest.shards import read_split

    ds = read_split(Path(prep).resolve(), "test").select_columns(["image", "boxes", "labels", "num_objects"])
    if limit:
        ds = ds.limit(limit)
    rows = {k: [] for k in ("image", "boxes", "labels", "num_objects")}
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for k in rows:
            rows[k].append(batch[k])
    data = {k: np.concatenate(v) for k, v in rows.items()}
    truth = [(b[:n], lab[:n]) for b, lab, n in zip(data["boxes"], data["labels"], data["num_objects"], strict=True)]
    return data["image"].astype(np.uint8), truth


def score(outputs: dict, truth: list, num_classes: int) -> dict:
    """One detection per image (argmax class, its softmax probability, the box) -> AP50 and class accuracy."""
    from raydet.detector.metrics import detection_summary, match_image

    logits = outputs["class_logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    stats = [
        match_image(
            gb,
            gl,
            outputs["boxes"][i : i + 1],
            pred[i : i + 1],
            probs[i, pred[i] : pred[i] + 1],
            num_classes,
            image_id=i,
        )
        for i, (gb, gl) in enumerate(truth)
    ]
    summary = detection_summary(sum(stats[1:], stats[0]))
    largest = np.array([gl[0] if len(gl) else -1 for _, gl in truth])
    return {
        "ap50": summary["voc_map_50"],
        "coco_ap50": summary["coco_map_50"],
        "accuracy": float(np.mean(pred[largest >= 0] == largest[largest >= 0])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("prep")
    parser.add_argument("--limit", type=int, default=None, help="test images to use (default: all)")
    args = parser.parse_args(argv)

    from raydet.cluster.runtime import init_ray, use_legacy_keras

    use_legacy_keras()
    init_ray()
    from raydet.export.quantize import load_float_model
    from raydet.export.run import Run
    from raydet.export.tflite import TFLiteModel

    images, truth = read_test(args.prep, args.limit)
    model = load_float_model(args.run)
    num_classes = int(model.output["class_logits"].shape[-1])
    print(f"{len(images)} test images, {num_classes} classes", flush=True)
    results = {}
    start = time.perf_counter()
    results["float"] = {
        **score(model.predict(images.astype(np.float32), batch_size=64, verbose=0), truth, num_classes),
        "bytes": Run(args.run).model("float").stat().st_size,
        "seconds": time.perf_counter() - start,
    }
    for mode in ("float32", "dynamic", "float16", "int8", "qat"):
        path = Run(args.run).model(mode)
        if not path.is_file():
            continue
        start = time.perf_counter()
        out = TFLiteModel(str(path), num_threads=1, batch_size=1).predict(images)
        results[mode] = {
            **score(out, truth, num_classes),
            "bytes": path.stat().st_size,
            "seconds": time.perf_counter() - start,
        }
    ref = results["float"]
    weights = model.count_params() * 4
    f32 = results.get("float32", {}).get("bytes")
    print(f"float32 weights: {weights:,} bytes")
    print(
        "| model | VOC AP50 | COCO AP50 | class acc | AP50 - float | bytes | vs float32 weights | vs float32 .tflite |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        vs_f32 = f"{r['bytes'] / f32:.3f}x" if f32 else "-"
        print(
            f"| {name} | {r['ap50']:.4f} | {r['coco_ap50']:.4f} | {r['accuracy']:.4f} | {r['ap50'] - ref['ap50']:+.4f} "
            f"| {r['bytes']:,} | {r['bytes'] / weights:.3f}x | {vs_f32} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
