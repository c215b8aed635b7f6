"""The dense detector on a real VOC folder (from scratch, or from ImageNet with --backbone): prepare -> train ->
quantize (int8) -> evaluate.

    python benchmarks/real.py ../shared/data/raccoon [--work DIR] [--image-size 128] [--epochs 150]
    python benchmarks/real.py ../shared/data/microcontrollers --image-size 128 --epochs 150
    python benchmarks/real.py ../shared/data/raccoon --backbone efficientnet_lite0 --image-size 160 \\
        --epochs 40 --lr 1e-3

Runs raydet's own stages in one Ray, as a user would type them (``raydet prepare`` with the hash split,
``raydet train``, ``raydet quantize --mode int8``, ``raydet evaluate --models float,int8``), and prints COCO AP50,
mAP@[.5:.95], AP75 and VOC AP50 of the float and int8 models on the test split, with the training time.
The test splits are small (42 and 37 photos): one photo moves AP50 by a few hundredths, so compare seeds
(``--seed``) before trusting a small difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a VOC dataset folder")
    parser.add_argument("--work", type=Path, default=None, help="folder for PREP and runs (default: a temporary one)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=None, help="default: raydet's (one per node)")
    parser.add_argument("--width", type=int, default=16, help="cnn backbone: filters of the first block")
    parser.add_argument("--backbone", default="cnn", help="cnn (from scratch) or efficientnet_lite0 (ImageNet)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    parser.add_argument("--freeze-bn", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"{args.data} not found")
    from raydet.config import EvaluateConfig, PrepareConfig, QuantizeConfig, TrainConfig

    try:  # every setting checked before any work
        train_cfg = TrainConfig(
            prep="",
            out="",
            name="real",
            workers=args.workers,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            width=args.width,
            backbone=args.backbone,
            pretrained=args.pretrained,
            freeze_bn=args.freeze_bn,
        )
        PrepareConfig(data=str(args.data), out="", image_size=args.image_size)
    except ValueError as exc:
        parser.error(str(exc))
    from dataclasses import replace

    from raydet.cluster.runtime import init_ray
    from raydet.evaluate.pool import evaluate
    from raydet.export.quantize import quantize
    from raydet.ingest.prepare import prepare
    from raydet.train.driver import train

    work = args.work or Path(tempfile.mkdtemp(prefix="raydet-real-"))
    prep, runs = work / "prep", work / "runs"
    init_ray()
    manifest = prepare(PrepareConfig(data=str(args.data), out=str(prep), image_size=args.image_size))
    t = time.perf_counter()
    summary = train(replace(train_cfg, prep=str(prep), out=str(runs)))
    train_s = time.perf_counter() - t
    quantize(QuantizeConfig(run=summary.run_dir, modes=("int8",)))
    report = evaluate(EvaluateConfig(run=summary.run_dir, data=str(prep), models=("float", "int8"), draw=16))

    print(
        f"\n{args.data}: {manifest['splits']['train']} train / {manifest['splits']['test']} test photos, "
        f"{len(manifest['classes'])} classes, {manifest['objects_loaded']} objects; {args.image_size} px, "
        f"{args.epochs} epochs, backbone {args.backbone}{'' if args.pretrained else ' (random init)'}, "
        f"width {args.width}, batch {args.batch_size}, lr {args.lr}, seed {args.seed}; training {train_s:.0f} s"
    )
    print("\n| model | COCO AP50 | mAP | AP75 | VOC AP50 |\n|---|---|---|---|---|")
    for name, m in report["models"].items():
        print(
            f"| {name} | {m['coco_map_50']:.3f} | {m['coco_map']:.3f} | {m['coco_map_75']:.3f} "
            f"| {m['voc_map_50']:.3f} |"
        )
    print(f"\nruns, reports and drawings under {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
