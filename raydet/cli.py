"""The ``raydet`` command: argument parsing and dispatch, nothing else.

Each subcommand turns its arguments into a frozen config (which validates itself, so bad arguments stop
here, before Ray or TensorFlow start) and calls one function of the module that owns the stage. Heavy
modules are imported only once the arguments are known to be good.

Errors and exit status:
    0    done.
    2    the user can fix it: a bad argument (argparse's own, or a config's ``UserError``: ``SystemExit(2)``
         before any work) or bad input found while working (a ``raydet.errors.UserError``: a missing or
         wrong dataset, PREP or RUN folder, a missing file the user named, a cluster too small for the
         request). One line on stderr, ``raydet <command>: error: <message>``, and no traceback.
    130  interrupted (Ctrl-C): one line, ``raydet <command>: interrupted``.
    1    anything else is a bug: the exception propagates and Python prints its traceback.
Which errors are the user's is decided where they are raised (``UserError`` and its subclasses), never here.
"""

from __future__ import annotations

import argparse
import sys

from raydet import config as C
from raydet.cluster.console import log_path, quiet_stderr
from raydet.errors import UserError
from raydet.ingest.classnames import parse_class_list
from raydet.train import schedule as S
from raydet.tune.space import longest_epochs, parse_space

EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use (e.g. auto, ray://head:10001). Default: RAY_ADDRESS, else a fresh local Ray",
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydet",
        description=(
            "raydet: distributed object detection on Ray (Pascal VOC in, Parquet shards, Ray Train, TFLite out)."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the built-in synthetic dataset (a VOC devkit with a train/test split)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--images", type=int, default=C.SynthConfig.images)
    p.add_argument("--image-size", type=int, default=C.SynthConfig.image_size, help="side of the written JPEGs, pixels")
    p.add_argument("--classes", type=int, default=C.SynthConfig.classes, help="number of shape classes (1-8)")
    p.add_argument("--max-objects", type=int, default=C.SynthConfig.max_objects)
    p.add_argument(
        "--object-size",
        default=",".join(f"{v:g}" for v in C.SynthConfig.object_size),
        help="MIN,MAX of an object's longer side, fractions of the image side (default %(default)s; "
        "e.g. 0.35,0.95 to pretrain for photos whose objects fill the frame)",
    )
    p.add_argument("--seed", type=int, default=C.SynthConfig.seed)

    p = sub.add_parser("prepare", help="VOC-labelled folder or bucket -> Parquet shards + manifest (Ray Data)")
    p.add_argument("data", help="dataset folder or URI (file://, s3://, gs://)")
    p.add_argument("--out", required=True, help="PREP folder to write")
    p.add_argument("--image-size", type=int, default=C.PrepareConfig.image_size)
    p.add_argument(
        "--classes",
        default=None,
        help="class names to keep, in label order: a comma list, or a file with one name per line "
        "(# comments; for names holding commas) (default: all found, sorted)",
    )
    p.add_argument("--test-fraction", type=float, default=C.PrepareConfig.test_fraction)
    p.add_argument(
        "--max-objects",
        type=int,
        default=C.PrepareConfig.max_objects,
        help="objects kept per TRAIN image at most, the largest (default %(default)s); test images "
        "keep every object, so AP is measured against the whole ground truth",
    )
    p.add_argument(
        "--max-xml-bytes",
        type=int,
        default=C.PrepareConfig.max_xml_bytes,
        help="skip an annotation file larger than this, unread (default %(default)s)",
    )
    p.add_argument(
        "--max-image-bytes",
        type=int,
        default=C.PrepareConfig.max_image_bytes,
        help="skip an image file larger than this, unread (default %(default)s)",
    )
    _add_max_pixels(p, C.PrepareConfig.max_pixels)
    _add_address(p)

    p = sub.add_parser("train", help="train the dense two-headed detector data-parallel with Ray Train")
    p.add_argument("prep", help="PREP folder written by `raydet prepare`")
    p.add_argument("--out", required=True, help="RUNS folder (shared storage on a multi-node cluster)")
    p.add_argument("--name", required=True, help="run name; re-running the same --out/--name resumes it")
    p.add_argument(
        "--workers",
        type=int,
        default=C.TrainConfig.workers,
        help="training workers (default: one per node with all its CPUs, or one per GPU with --gpu)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=C.TrainConfig.cpus_per_worker,
        help="CPUs each worker reserves (default: the node's CPUs with default --workers, else 1)",
    )
    _add_backbone(p)
    _add_augment(p)
    p.add_argument(
        "--epochs",
        type=int,
        default=C.TrainConfig.epochs,
        help="total epochs (default: sized from the train split to about "
        f"{S.TARGET_STEPS} optimizer steps; a resumed run trains only the missing ones)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=C.TrainConfig.checkpoint_every,
        help=f"validate and checkpoint every this many epochs (default: about {S.CHECKPOINTS} a run)",
    )
    p.add_argument(
        "--precision",
        default=None,
        help=f"Keras mixed precision, one of {', '.join(C.PRECISIONS)} "
        "(default: mixed_float16 with --gpu, else float32; model.keras is float32 either way)",
    )
    p.add_argument(
        "--ema",
        dest="ema_decay",
        type=float,
        default=C.TrainConfig.ema_decay,
        help="decay of the weights' moving average that is validated and exported (0: none)",
    )
    p.add_argument(
        "--batch-size", type=int, default=C.TrainConfig.batch_size, help="global batch size, split across workers"
    )
    p.add_argument("--lr", type=float, default=C.TrainConfig.lr, help="learning rate for the global batch size")
    p.add_argument("--qat", action="store_true", help="quantization-aware training")
    p.add_argument(
        "--init-from",
        default=None,
        help="RUN folder whose float model starts this run (QAT fine-tune, "
        "or a model pretrained on `raydet synth` data for a small real dataset: see README)",
    )
    p.add_argument(
        "--clip-norm",
        type=float,
        default=C.TrainConfig.clip_norm,
        help="clip the global gradient norm to this (0: no clipping)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=C.TrainConfig.warmup_epochs,
        help="raise the learning rate linearly, step by step, over this many first epochs (0: none)",
    )
    p.add_argument("--seed", type=int, default=C.TrainConfig.seed, help="initial weights, shuffling and augmentation")
    _add_memory_budget(p)
    _add_resource_timeout(p)
    _add_address(p)

    _add_tune_parser(sub)

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
    p.add_argument(
        "--threads", type=int, default=C.EvaluateConfig.threads, help="interpreter threads (and CPUs) per actor"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=C.EvaluateConfig.batch_size,
        help="images per actor call (default: ~24 MiB of pixels, at most 512, at least 2 calls per actor)",
    )
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
    _add_max_pixels(p, C.PredictConfig.max_pixels)

    p = sub.add_parser("run", help="the whole job: synth (no --data), prepare, train, quantize, evaluate")
    p.add_argument("--data", default=None, help="VOC dataset (default: the built-in synthetic set)")
    p.add_argument("--out", default=C.RunConfig.out)
    p.add_argument("--images", type=int, default=C.RunConfig.images, help="synthetic images to make")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="default: chosen from the boxes with --data, 96 for the synthetic set",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=C.RunConfig.workers,
        help="training workers (default: one per node, or one per GPU with --gpu)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: sized from the train split with --data, 15 for the synthetic set",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"default: {C.TrainConfig.batch_size} with --data, 32 for the synthetic set",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for the global batch size "
        f"(default: {C.TrainConfig.lr:g} with --data, 2e-3 for the synthetic set)",
    )
    _add_backbone(p, synthetic_default=True)
    _add_augment(p)
    p.add_argument("--seed", type=int, default=C.RunConfig.seed, help="initial weights, shuffling and augmentation")
    p.add_argument(
        "--tune",
        type=int,
        default=None,
        metavar="N",
        help="search N training configurations (`raydet tune`; --epochs is then the longest trial's, by "
        "default what training alone would run) and quantize and evaluate the best trial",
    )
    p.add_argument("--gpu", action="store_true")
    _add_memory_budget(p)
    _add_resource_timeout(p)
    _add_address(p)

    _add_serve(sub)
    return parser


# ---------------------------------------------------------------------------------------------- raydet serve


def _add_serve(sub) -> None:
    """The ``serve`` subcommand (raydet.serve; ServeConfig)."""
    d = C.ServeConfig
    p = sub.add_parser("serve", help="answer detection requests over HTTP from Ray Serve replicas (batched)")
    p.add_argument("run", help="RUN folder or URI (a bucket RUN: each replica fetches the model file)")
    p.add_argument("--model", default=d.model, help=f"one of {','.join(C.MODEL_NAMES)} (default %(default)s)")
    p.add_argument("--replicas", type=int, default=d.replicas, help="fixed number of replicas (default %(default)s)")
    p.add_argument(
        "--autoscale",
        default=None,
        metavar="MIN..MAX",
        help="let Serve add and remove replicas with the load, between MIN and MAX (instead of --replicas)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="interpreter threads (and CPUs reserved) per replica (default %(default)s)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="requests one model call takes at most (default %(default)s; 1: no batching)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=d.batch_wait_ms,
        help="how long a batch waits to fill once its first request is in (default %(default)s)",
    )
    p.add_argument("--port", type=int, default=d.port, help="HTTP port (default %(default)s)")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s; 0.0.0.0: every one)")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=d.max_bytes,
        help="refuse (413) a request body larger than this (default %(default)s)",
    )
    _add_max_pixels(p, d.max_pixels)
    p.add_argument(
        "--score-threshold",
        type=float,
        default=d.score_threshold,
        help="default of a request's ?score_threshold= (default %(default)s)",
    )
    p.add_argument("--access-log", action="store_true", help="one line per request in Serve's replica logs")
    p.add_argument(
        "--detach",
        action="store_true",
        help="on a cluster: deploy and return, the application keeps serving (jobs/serve.py)",
    )
    _add_address(p)


def serve_config_from_args(args: argparse.Namespace) -> C.ServeConfig:
    """The ``serve`` arguments -> ServeConfig (UserError naming a bad value)."""
    autoscale = C.parse_autoscale(args.autoscale)
    if autoscale is not None and args.replicas != C.ServeConfig.replicas:
        raise UserError(f"--replicas {args.replicas} and --autoscale {args.autoscale}: give one of them")
    return C.ServeConfig(
        run=args.run,
        model=args.model,
        replicas=args.replicas,
        autoscale=autoscale,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        port=args.port,
        host=args.host,
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        score_threshold=args.score_threshold,
        access_log=args.access_log,
        address=args.address,
        detach=args.detach,
    )


# ---------------------------------------------------------------------------------------------- raydet tune


def _add_tune_parser(sub) -> None:
    """``raydet tune``: the search's own flags, then the base run's (what the space does not vary)."""
    t = C.TuneConfig
    p = sub.add_parser("tune", help="Ray Tune search over training settings, ASHA on val AP50; one RUN per trial")
    p.add_argument("prep", help="PREP folder written by `raydet prepare`")
    p.add_argument("--out", required=True, help="RUNS folder; trial k trains as RUNS/NAME/trial-k")
    p.add_argument("--name", required=True, help="search name; re-running the same command continues it")
    p.add_argument("--trials", type=int, default=t.trials, help="configurations to try (default %(default)s)")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=t.max_epochs,
        help="epochs of the longest trial, ASHA's max_t (default: the longest epochs= of --space, else what "
        "`raydet train` runs on PREP, so trial 1 is that run)",
    )
    p.add_argument(
        "--space",
        default=None,
        help="what to search, e.g. 'lr=1e-4..3e-3,batch=8|16,aug=0.5..1.5,backbone=cnn|efficientnet_lite0,"
        "epochs=15|30' (names left out keep the default space around the base run's settings)",
    )
    p.add_argument(
        "--grace-epochs", type=int, default=None, help="epochs before ASHA may stop a trial (default: --max-epochs / 5)"
    )
    p.add_argument(
        "--reduction-factor",
        type=float,
        default=t.reduction_factor,
        help="ASHA keeps the best 1/F of the trials at each rung (default %(default)g)",
    )
    p.add_argument("--seed", type=int, default=t.seed, help="which configurations are sampled (and the runs' seed)")
    p.add_argument("--workers", type=int, default=None, help="training workers per trial (default as `raydet train`)")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    _add_backbone(p)
    _add_augment(p)
    p.add_argument("--batch-size", type=int, default=C.TrainConfig.batch_size, help="global batch, the space's centre")
    p.add_argument("--lr", type=float, default=C.TrainConfig.lr, help="learning rate, the space's centre")
    _add_memory_budget(p)
    _add_resource_timeout(p)
    _add_address(p)


def _tune_config(args: argparse.Namespace) -> C.TuneConfig:
    base = C.TrainConfig(
        prep=args.prep,
        out=args.out,
        name=args.name,
        workers=args.workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        backbone=args.backbone,
        pretrained=args.pretrained,
        freeze_bn=args.freeze_bn,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        augmentation=augment_from_args(args),
        close_mosaic=args.close_mosaic,
        seed=args.seed,
        memory_budget_gb=args.memory_budget_gb,
        resource_timeout_s=args.resource_timeout_s,
        address=args.address,
    )
    cfg = C.TuneConfig(
        train=base,
        trials=args.trials,
        # the space's longest trial, when it names one, is known before any work: TuneConfig checks
        # --grace-epochs against it; the PREP's default is resolved by the search (raydet.tune.search)
        max_epochs=args.max_epochs if args.max_epochs is not None else longest_epochs(args.space),
        space=args.space,
        grace_epochs=args.grace_epochs,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
    )
    parse_space(cfg.space or "", cfg.max_epochs)  # UserError naming the bad part, before any work
    return cfg


def _add_max_pixels(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--max-pixels",
        type=int,
        default=default,
        help="skip an image whose header gives more pixels than this (width x height), undecoded (default %(default)s)",
    )


def _add_memory_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        default=C.TrainConfig.memory_budget_gb,
        help="GB of images one worker may hold in memory; a larger shard streams from Ray Data "
        "(0: always stream) (default %(default)s)",
    )


def _add_resource_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resource-timeout",
        dest="resource_timeout_s",
        type=float,
        default=C.RESOURCE_TIMEOUT_S,
        metavar="SECONDS",
        help="on an autoscaling cluster, how long to wait for the nodes this needs "
        "(default %(default)g); a fixed cluster that cannot hold it refuses at once",
    )


def _add_backbone(p: argparse.ArgumentParser, synthetic_default: bool = False) -> None:
    default = "cnn for the synthetic set, else " if synthetic_default else ""
    p.add_argument(
        "--backbone",
        default=None if synthetic_default else C.TrainConfig.backbone,
        choices=C.BACKBONE_NAMES,
        help="feature extractor under the detection heads: cnn (from scratch) or efficientnet_lite0, "
        "_lite1, _lite2 (ImageNet-pretrained, for real photos; native sizes 224, 240, 260 px) "
        f"(default: {default}{C.TrainConfig.backbone})",
    )
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="an efficientnet_lite backbone from random weights instead of ImageNet's",
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep the pretrained backbone's BatchNorm statistics (for very small per-worker batches)",
    )


def _add_augment(p: argparse.ArgumentParser) -> None:
    """Training augmentation flags (raydet.config.AugmentConfig; all recorded in RUN/config.json)."""
    a = C.AugmentConfig
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train on the images as stored")
    p.add_argument(
        "--mosaic",
        type=float,
        default=a.mosaic,
        help="probability an image is a mosaic of four (default %(default)s; 0: none)",
    )
    p.add_argument(
        "--close-mosaic",
        type=int,
        default=C.TrainConfig.close_mosaic,
        help="train the last N epochs without mosaic (default %(default)s)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=a.scale,
        help="zoom in [1 - s, 1 + s], out with padding as well as in (default %(default)s)",
    )
    p.add_argument("--translate", type=float, default=a.translate, help="shift, fraction of the side")
    p.add_argument(
        "--hsv",
        default=f"{a.hsv_h:g},{a.hsv_s:g},{a.hsv_v:g}",
        help="hue, saturation, value gains (default %(default)s; 0,0,0: no colour change)",
    )
    p.add_argument("--flip", type=float, default=a.hflip, help="probability of a left-right mirror")
    p.add_argument(
        "--vflip",
        type=float,
        default=a.vflip,
        help="probability of a top-bottom mirror (e.g. 0.5 for overhead or microscope images)",
    )
    p.add_argument(
        "--rot90",
        type=float,
        default=a.rot90,
        help="probability of 1-3 quarter turns (e.g. 0.5 for overhead or microscope images)",
    )


def augment_from_args(args: argparse.Namespace) -> C.AugmentConfig:
    """The --mosaic/--scale/--translate/--hsv/--flip/--vflip/--rot90 flags -> AugmentConfig (UserError naming a
    bad value)."""
    parts = args.hsv.split(",")
    try:
        hsv_h, hsv_s, hsv_v = (float(v) for v in parts)
    except ValueError:
        raise UserError(f"malformed --hsv {args.hsv!r}: expected three gains H,S,V, e.g. 0.015,0.7,0.4") from None
    return C.AugmentConfig(
        hflip=args.flip,
        vflip=args.vflip,
        rot90=args.rot90,
        scale=args.scale,
        translate=args.translate,
        mosaic=args.mosaic,
        hsv_h=hsv_h,
        hsv_s=hsv_s,
        hsv_v=hsv_v,
    )


def _modes(text: str) -> tuple[str, ...]:
    return C.QUANT_MODES if text == "all" else tuple(m.strip() for m in text.split(","))


def config_from_args(args: argparse.Namespace):
    """Namespace -> the stage's frozen config. Raises ``UserError`` naming a bad value."""
    cmd = args.command
    if cmd == "synth":
        return C.SynthConfig(
            out=args.out,
            images=args.images,
            image_size=args.image_size,
            classes=args.classes,
            max_objects=args.max_objects,
            seed=args.seed,
            object_size=C.parse_object_size(args.object_size),
        )
    if cmd == "prepare":
        return C.PrepareConfig(
            data=args.data,
            out=args.out,
            image_size=args.image_size,
            classes=parse_class_list(args.classes),
            test_fraction=args.test_fraction,
            max_objects=args.max_objects,
            max_xml_bytes=args.max_xml_bytes,
            max_image_bytes=args.max_image_bytes,
            max_pixels=args.max_pixels,
            address=args.address,
        )
    if cmd == "train":
        return C.TrainConfig(
            prep=args.prep,
            out=args.out,
            name=args.name,
            workers=args.workers,
            use_gpu=args.gpu,
            cpus_per_worker=args.cpus_per_worker,
            backbone=args.backbone,
            pretrained=args.pretrained,
            freeze_bn=args.freeze_bn,
            epochs=args.epochs,
            batch_size=args.batch_size,
            checkpoint_every=args.checkpoint_every,
            ema_decay=args.ema_decay,
            precision=args.precision,
            augment=args.augment,
            augmentation=augment_from_args(args),
            close_mosaic=args.close_mosaic,
            lr=args.lr,
            qat=args.qat,
            init_from=args.init_from,
            clip_norm=args.clip_norm,
            warmup_epochs=args.warmup_epochs,
            seed=args.seed,
            address=args.address,
            resource_timeout_s=args.resource_timeout_s,
            memory_budget_gb=args.memory_budget_gb,
        )
    if cmd == "tune":
        return _tune_config(args)
    if cmd == "quantize":
        return C.QuantizeConfig(
            run=args.run,
            modes=_modes(args.mode),
            calibration=args.calibration,
            calibration_images=args.calibration_images,
            address=args.address,
        )
    if cmd == "evaluate":
        return C.EvaluateConfig(
            run=args.run,
            data=args.data,
            models=tuple(m.strip() for m in args.models.split(",")),
            actors=args.actors,
            threads=args.threads,
            batch_size=args.batch_size,
            coco_out=args.coco_out,
            draw=args.draw,
            address=args.address,
            resource_timeout_s=args.resource_timeout_s,
        )
    if cmd == "report":
        return C.ReportConfig(run=args.run, screenshot=args.screenshot)
    if cmd == "predict":
        return C.PredictConfig(
            run=args.run,
            paths=tuple(args.paths),
            out=args.out,
            model=args.model,
            score_threshold=args.score_threshold,
            max_pixels=args.max_pixels,
        )
    if cmd == "run":
        return C.RunConfig(
            data=args.data,
            out=args.out,
            images=args.images,
            image_size=args.image_size,
            workers=args.workers,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            backbone=args.backbone,
            pretrained=args.pretrained,
            freeze_bn=args.freeze_bn,
            augment=args.augment,
            augmentation=augment_from_args(args),
            close_mosaic=args.close_mosaic,
            seed=args.seed,
            use_gpu=args.gpu,
            memory_budget_gb=args.memory_budget_gb,
            resource_timeout_s=args.resource_timeout_s,
            address=args.address,
            tune=args.tune,
        )
    if cmd == "serve":
        return serve_config_from_args(args)
    raise AssertionError(f"unhandled command {cmd!r}")


def ray_is_up() -> bool:
    """Whether this process is connected to Ray (False when Ray was never imported)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def dispatch(cfg) -> object:
    """Run the stage a config belongs to (imports its module only now)."""
    from raydet.cluster.runtime import use_legacy_keras

    use_legacy_keras()  # before anything imports TensorFlow
    if isinstance(cfg, C.SynthConfig):
        from raydet.ingest.synth import write_synthetic

        return write_synthetic(cfg)
    if isinstance(cfg, C.PrepareConfig):
        from raydet.ingest.prepare import prepare

        return prepare(cfg)
    if isinstance(cfg, C.TrainConfig):
        from raydet.train.driver import train

        return train(cfg)
    if isinstance(cfg, C.TuneConfig):
        from raydet.tune.search import tune

        return tune(cfg)
    if isinstance(cfg, C.QuantizeConfig):
        from raydet.export.quantize import quantize

        return quantize(cfg)
    if isinstance(cfg, C.EvaluateConfig):
        from raydet.evaluate.pool import evaluate

        return evaluate(cfg)
    if isinstance(cfg, C.ReportConfig):
        from raydet.report.page import report

        return report(cfg)
    if isinstance(cfg, C.PredictConfig):
        from raydet.evaluate.predict import predict

        return predict(cfg)
    if isinstance(cfg, C.RunConfig):
        from raydet.pipeline import run

        return run(cfg)
    if isinstance(cfg, C.ServeConfig):
        from raydet.serve.driver import serve

        return serve(cfg)
    raise AssertionError(f"unhandled config {type(cfg).__name__}")


def run_quietly(cfg, command: str) -> object:
    """``dispatch(cfg)`` with Ray's and TensorFlow's messages in a log file (raydet.cluster.console;
    ``RAYDET_VERBOSE=1``: on the console). A Ray this command started is stopped inside, so its last forwarded lines
    land there too."""
    with quiet_stderr(log_path(command)):
        ours = not ray_is_up()
        try:
            return dispatch(cfg)
        finally:
            if ours and ray_is_up():
                sys.modules["ray"].shutdown()


def _user_error(command: str, exc: BaseException) -> int:
    """Print ``exc`` as the one line of a user error; the exit status for it."""
    message = " ".join(str(exc).split("\n"))  # one line, whatever the message holds
    print(f"raydet {command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)  # argparse's own errors (unknown flag, not a number): usage, exit 2
    try:
        cfg = config_from_args(args)
    except UserError as exc:  # like argparse's errors: SystemExit(2) before any work
        raise SystemExit(_user_error(args.command, exc)) from None
    try:
        run_quietly(cfg, args.command)
    except KeyboardInterrupt:  # Ctrl-C: what an earlier command wrote is intact (each stage commits at its end)
        print(f"raydet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as exc:  # anything else is a bug: it propagates and Python prints its traceback (exit 1)
        return _user_error(args.command, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
