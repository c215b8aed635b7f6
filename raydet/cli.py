"""The ``raydet`` command: argument parsing and dispatch, nothing else.

Each subcommand turns its arguments into a frozen config (which validates itself, so bad arguments stop
here, before Ray or TensorFlow start) and calls one function of the module that owns the stage. Heavy
modules are imported only once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import sys

from raydet import config as C
from raydet.console import log_path, quiet_stderr


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to use (e.g. auto, ray://head:10001). Default: RAY_ADDRESS, else a fresh local Ray")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydet", description="raydet: distributed object detection on Ray (Pascal VOC in, Parquet shards, Ray Train, TFLite out).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the built-in synthetic dataset (a VOC devkit with a train/test split)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--images", type=int, default=C.SynthConfig.images)
    p.add_argument("--image-size", type=int, default=C.SynthConfig.image_size, help="side of the written JPEGs, pixels")
    p.add_argument("--classes", type=int, default=C.SynthConfig.classes, help="number of shape classes (1-8)")
    p.add_argument("--max-objects", type=int, default=C.SynthConfig.max_objects)
    p.add_argument("--object-size", default=",".join(f"{v:g}" for v in C.SynthConfig.object_size),
                   help="MIN,MAX of an object's longer side, fractions of the image side (default %(default)s; "
                        "e.g. 0.35,0.95 to pretrain for photos whose objects fill the frame)")
    p.add_argument("--seed", type=int, default=C.SynthConfig.seed)

    p = sub.add_parser("prepare", help="VOC-labelled folder or bucket -> Parquet shards + manifest (Ray Data)")
    p.add_argument("data", help="dataset folder or URI (file://, s3://, gs://)")
    p.add_argument("--out", required=True, help="PREP folder to write")
    p.add_argument("--image-size", type=int, default=C.PrepareConfig.image_size)
    p.add_argument("--classes", default=None, help="comma-separated class names to keep, in label order (default: all found, sorted)")
    p.add_argument("--test-fraction", type=float, default=C.PrepareConfig.test_fraction)
    p.add_argument("--max-objects", type=int, default=C.PrepareConfig.max_objects)
    p.add_argument("--max-xml-bytes", type=int, default=C.PrepareConfig.max_xml_bytes,
                   help="skip an annotation file larger than this, unread (default %(default)s)")
    p.add_argument("--max-image-bytes", type=int, default=C.PrepareConfig.max_image_bytes,
                   help="skip an image file larger than this, unread (default %(default)s)")
    _add_address(p)

    p = sub.add_parser("train", help="train the dense two-headed detector data-parallel with Ray Train")
    p.add_argument("prep", help="PREP folder written by `raydet prepare`")
    p.add_argument("--out", required=True, help="RUNS folder (shared storage on a multi-node cluster)")
    p.add_argument("--name", required=True, help="run name; re-running the same --out/--name resumes it")
    p.add_argument("--workers", type=int, default=C.TrainConfig.workers,
                   help="training workers (default: one per node with all its CPUs, or one per GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=C.TrainConfig.cpus_per_worker,
                   help="CPUs each worker reserves (default: the node's CPUs with default --workers, else 1)")
    _add_backbone(p)
    p.add_argument("--epochs", type=int, default=C.TrainConfig.epochs, help="total epochs (a resumed run trains only the missing ones)")
    p.add_argument("--batch-size", type=int, default=C.TrainConfig.batch_size, help="global batch size, split across workers")
    p.add_argument("--lr", type=float, default=C.TrainConfig.lr, help="learning rate for the global batch size")
    p.add_argument("--qat", action="store_true", help="quantization-aware training")
    p.add_argument("--init-from", default=None, help="RUN folder whose float model starts this run (QAT fine-tune, "
                   "or a model pretrained on `raydet synth` data for a small real dataset: see README)")
    p.add_argument("--clip-norm", type=float, default=C.TrainConfig.clip_norm,
                   help="clip the global gradient norm to this (0: no clipping)")
    p.add_argument("--warmup-epochs", type=float, default=C.TrainConfig.warmup_epochs,
                   help="raise the learning rate linearly, step by step, over this many first epochs (0: none)")
    p.add_argument("--seed", type=int, default=C.TrainConfig.seed, help="initial weights, shuffling and augmentation")
    _add_memory_budget(p)
    _add_resource_timeout(p)
    _add_address(p)

    p = sub.add_parser("quantize", help="post-training quantization of a run's float model to TFLite")
    p.add_argument("run", help="RUN folder (RUNS/NAME)")
    p.add_argument("--mode", default="all", help="dynamic, float16, int8 or all (comma lists work too)")
    p.add_argument("--calibration", default=None, help="PREP folder for int8 calibration (default: the run's)")
    p.add_argument("--calibration-images", type=int, default=C.QuantizeConfig.calibration_images)
    _add_address(p)

    p = sub.add_parser("evaluate", help="evaluate models of a run in a Ray actor pool; report, COCO files, drawings")
    p.add_argument("run", help="RUN folder")
    p.add_argument("--data", required=True, help="PREP folder; its test split is evaluated")
    p.add_argument("--models", default="float,int8", help=f"comma list of {','.join(C.MODEL_NAMES)}")
    p.add_argument("--actors", type=int, default=C.EvaluateConfig.actors)
    p.add_argument("--threads", type=int, default=C.EvaluateConfig.threads, help="interpreter threads (and CPUs) per actor")
    p.add_argument("--batch-size", type=int, default=C.EvaluateConfig.batch_size,
                   help="images per actor call (default: ~24 MiB of pixels, at most 512, at least 2 calls per actor)")
    p.add_argument("--coco-out", default=None, help="folder for ground_truth.json and detections_<model>.json")
    p.add_argument("--draw", type=int, default=C.EvaluateConfig.draw, help="test images to draw (0: none)")
    _add_resource_timeout(p)
    _add_address(p)

    p = sub.add_parser("report", help="write RUN/eval/report.html again from the run's files (no evaluation)")
    p.add_argument("run", help="RUN folder evaluated by `raydet evaluate` (or `raydet run`)")
    p.add_argument("--screenshot", default=None, help="also save a PNG of the page there (headless Chromium)")

    p = sub.add_parser("predict", help="draw predicted boxes on images or folders of images")
    p.add_argument("run", help="RUN folder")
    p.add_argument("paths", nargs="+", help="images or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=C.PredictConfig.model)
    p.add_argument("--score-threshold", type=float, default=C.PredictConfig.score_threshold)

    p = sub.add_parser("run", help="the whole job: synth (no --data), prepare, train, quantize, evaluate")
    p.add_argument("--data", default=None, help="VOC dataset (default: the built-in synthetic set)")
    p.add_argument("--out", default=C.RunConfig.out)
    p.add_argument("--images", type=int, default=C.RunConfig.images, help="synthetic images to make")
    p.add_argument("--image-size", type=int, default=C.RunConfig.image_size)
    p.add_argument("--workers", type=int, default=C.RunConfig.workers,
                   help="training workers (default: one per node, or one per GPU with --gpu)")
    p.add_argument("--epochs", type=int, default=C.RunConfig.epochs)
    p.add_argument("--batch-size", type=int, default=C.RunConfig.batch_size)
    p.add_argument("--lr", type=float, default=C.RunConfig.lr, help="learning rate for the global batch size")
    _add_backbone(p)
    p.add_argument("--gpu", action="store_true")
    _add_memory_budget(p)
    _add_resource_timeout(p)
    _add_address(p)
    return parser


def _add_memory_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-budget-gb", type=float, default=C.TrainConfig.memory_budget_gb,
                   help="GB of images one worker may hold in memory; a larger shard streams from Ray Data "
                        "(0: always stream) (default %(default)s)")


def _add_resource_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resource-timeout", dest="resource_timeout_s", type=float, default=C.RESOURCE_TIMEOUT_S,
                   metavar="SECONDS", help="on an autoscaling cluster, how long to wait for the nodes this needs "
                                           "(default %(default)g); a fixed cluster that cannot hold it refuses at once")


def _add_backbone(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=C.TrainConfig.backbone, choices=C.BACKBONE_NAMES,
                   help="feature extractor under the detection heads: cnn (from scratch) or efficientnet_lite0, "
                        "_lite1, _lite2 (ImageNet-pretrained, for real photos; native sizes 224, 240, 260 px) "
                        "(default %(default)s)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="an efficientnet_lite backbone from random weights instead of ImageNet's")
    p.add_argument("--freeze-bn", action="store_true",
                   help="keep the pretrained backbone's BatchNorm statistics (for very small per-worker batches)")


def _modes(text: str) -> tuple[str, ...]:
    return C.QUANT_MODES if text == "all" else tuple(m.strip() for m in text.split(","))


def config_from_args(args: argparse.Namespace):
    """Namespace -> the stage's frozen config. Raises ValueError naming a bad value."""
    cmd = args.command
    if cmd == "synth":
        return C.SynthConfig(out=args.out, images=args.images, image_size=args.image_size,
                             classes=args.classes, max_objects=args.max_objects, seed=args.seed,
                             object_size=C.parse_object_size(args.object_size))
    if cmd == "prepare":
        return C.PrepareConfig(data=args.data, out=args.out, image_size=args.image_size,
                               classes=C.parse_class_list(args.classes), test_fraction=args.test_fraction,
                               max_objects=args.max_objects, max_xml_bytes=args.max_xml_bytes,
                               max_image_bytes=args.max_image_bytes, address=args.address)
    if cmd == "train":
        return C.TrainConfig(prep=args.prep, out=args.out, name=args.name, workers=args.workers, use_gpu=args.gpu,
                             cpus_per_worker=args.cpus_per_worker, backbone=args.backbone,
                             pretrained=args.pretrained, freeze_bn=args.freeze_bn, epochs=args.epochs,
                             batch_size=args.batch_size,
                             lr=args.lr, qat=args.qat, init_from=args.init_from, clip_norm=args.clip_norm,
                             warmup_epochs=args.warmup_epochs, seed=args.seed, address=args.address,
                             resource_timeout_s=args.resource_timeout_s, memory_budget_gb=args.memory_budget_gb)
    if cmd == "quantize":
        return C.QuantizeConfig(run=args.run, modes=_modes(args.mode), calibration=args.calibration,
                                calibration_images=args.calibration_images, address=args.address)
    if cmd == "evaluate":
        return C.EvaluateConfig(run=args.run, data=args.data, models=tuple(m.strip() for m in args.models.split(",")),
                                actors=args.actors, threads=args.threads, batch_size=args.batch_size, coco_out=args.coco_out,
                                draw=args.draw, address=args.address, resource_timeout_s=args.resource_timeout_s)
    if cmd == "report":
        return C.ReportConfig(run=args.run, screenshot=args.screenshot)
    if cmd == "predict":
        return C.PredictConfig(run=args.run, paths=tuple(args.paths), out=args.out, model=args.model,
                               score_threshold=args.score_threshold)
    if cmd == "run":
        return C.RunConfig(data=args.data, out=args.out, images=args.images, image_size=args.image_size,
                           workers=args.workers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           backbone=args.backbone, pretrained=args.pretrained, freeze_bn=args.freeze_bn,
                           use_gpu=args.gpu, memory_budget_gb=args.memory_budget_gb,
                           resource_timeout_s=args.resource_timeout_s, address=args.address)
    raise AssertionError(f"unhandled command {cmd!r}")


def ray_is_up() -> bool:
    """Whether this process is connected to Ray (False when Ray was never imported)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def dispatch(cfg) -> object:
    """Run the stage a config belongs to (imports its module only now)."""
    from raydet.runtime import use_legacy_keras

    use_legacy_keras()  # before anything imports TensorFlow
    if isinstance(cfg, C.SynthConfig):
        from raydet.synth import write_synthetic
        return write_synthetic(cfg)
    if isinstance(cfg, C.PrepareConfig):
        from raydet.data import prepare
        return prepare(cfg)
    if isinstance(cfg, C.TrainConfig):
        from raydet.train import train
        return train(cfg)
    if isinstance(cfg, C.QuantizeConfig):
        from raydet.quantize import quantize
        return quantize(cfg)
    if isinstance(cfg, C.EvaluateConfig):
        from raydet.evaluate import evaluate
        return evaluate(cfg)
    if isinstance(cfg, C.ReportConfig):
        from raydet.report import report
        return report(cfg)
    if isinstance(cfg, C.PredictConfig):
        from raydet.predict import predict
        return predict(cfg)
    if isinstance(cfg, C.RunConfig):
        from raydet.pipeline import run
        return run(cfg)
    raise AssertionError(f"unhandled config {type(cfg).__name__}")


def run_quietly(cfg, command: str) -> object:
    """``dispatch(cfg)`` with Ray's and TensorFlow's messages in a log file (raydet.console; ``RAYDET_VERBOSE=1``:
    on the console). A Ray this command started is stopped inside, so its last forwarded lines land there too."""
    with quiet_stderr(log_path(command)):
        ours = not ray_is_up()
        try:
            return dispatch(cfg)
        finally:
            if ours and ray_is_up():
                sys.modules["ray"].shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(f"{args.command}: {exc}")  # exits 2 before any work
    try:
        run_quietly(cfg, args.command)
    except KeyboardInterrupt:  # Ctrl-C: what an earlier command wrote is intact (each stage commits at its end)
        print(f"raydet {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        if not is_input_error(exc):
            raise  # an internal error: Python prints its traceback
        print(f"raydet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


# raydet's modules that check what users give them (arguments, files, datasets, runs) and say what is wrong in
# the message; the pure numerical modules (boxes, targets, decode, metrics, ...) raise only on a bug.
CHECKING_MODULES = frozenset({"config", "data", "voc", "images", "shards", "storage", "train", "quantize", "qat",
                              "infer", "evaluate", "predict", "pipeline", "report", "synth", "resources", "nodes"})


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports bad input, so its message alone is printed: a missing file, or a ValueError that
    one of raydet's ``CHECKING_MODULES`` raised itself. A ValueError raised anywhere else (NumPy, TensorFlow,
    Ray, raydet's numerical modules) is an internal error and keeps its traceback."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    package, _, name = module.partition(".")
    return package == "raydet" and name in CHECKING_MODULES


if __name__ == "__main__":
    sys.exit(main())
