"""What quantization costs: COCO AP50 / mAP and size of a run's float model against each of its .tflite files.

    python benchmarks/quantize.py RUN PREP [--limit N]

Reads PREP's test split (raydet.train.inputs.load_rows, no Ray), runs every model the run has (float Keras, then
model_<mode>.tflite for float32, dynamic, float16, int8, qat), decodes the heatmap and box maps as
``raydet evaluate`` does (raydet.detector.decode, the same top-k and score floor) and scores every detection with
raydet.detector.metrics on normalized boxes; prints COCO AP50, mAP@[.5:.95], VOC AP50, file size, and each model's
AP50 change and size ratio against float. Speed is benchmarks/infer.py's job; `raydet evaluate` gives the same AP
in pixels with its report.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def read_test(prep: str, limit: int | None):
    """PREP/test -> images (N, S, S, 3) uint8, per-image ground truth [(boxes (G, 4) xyxy normalized, labels (G,),
    difficult (G,))]."""
    from raydet.train.inputs import load_rows

    rows = load_rows(prep, "test", 0, limit)
    truth = [
        (b[:n], lab[:n], d[:n])
        for b, lab, d, n in zip(rows["boxes"], rows["labels"], rows["difficult"], rows["num_objects"], strict=True)
    ]
    return rows["image"], truth


def score(outputs: dict, truth: list, num_classes: int) -> dict:
    """The heatmap and box maps of every test image -> COCO AP50, mAP@[.5:.95] and VOC AP50."""
    from raydet.detector.decode import TOP_K, decode
    from raydet.detector.metrics import MatchStats, detection_summary, match_image
    from raydet.evaluate.pool import METRIC_SCORE_THRESHOLD

    decoded = decode(outputs["heatmap"], outputs["boxes"], top_k=TOP_K, score_threshold=METRIC_SCORE_THRESHOLD)
    stats = [
        match_image(gb, gl, det.boxes, det.labels, det.scores, num_classes, image_id=i, gt_difficult=gd)
        for i, ((gb, gl, gd), det) in enumerate(zip(truth, decoded, strict=True))
    ]
    summary = detection_summary(MatchStats.concat(stats))
    return {"ap50": summary["coco_map_50"], "map": summary["coco_map"], "voc_ap50": summary["voc_map_50"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("prep")
    parser.add_argument("--limit", type=int, default=None, help="test images to use (default: all)")
    args = parser.parse_args(argv)

    from raydet.cluster.runtime import use_legacy_keras

    use_legacy_keras()
    from raydet.export.quantize import load_float_model
    from raydet.export.run import Run
    from raydet.export.tflite import TFLiteModel

    images, truth = read_test(args.prep, args.limit)
    model = load_float_model(args.run)
    num_classes = int(model.get_layer("heatmap").output.shape[-1])
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
    print("| model | COCO AP50 | mAP | VOC AP50 | AP50 - float | bytes | vs float32 weights | vs float32 .tflite |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        vs_f32 = f"{r['bytes'] / f32:.3f}x" if f32 else "-"
        print(
            f"| {name} | {r['ap50']:.4f} | {r['map']:.4f} | {r['voc_ap50']:.4f} | {r['ap50'] - ref['ap50']:+.4f} "
            f"| {r['bytes']:,} | {r['bytes'] / weights:.3f}x | {vs_f32} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
