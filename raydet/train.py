"""Data-parallel training with Ray Train's TensorflowTrainer (tf-keras, MultiWorkerMirroredStrategy).

``train(cfg)`` [driver, here] checks the PREP folder and the cluster, reads the Parquet shards with Ray Data and
runs ``raydet.train_worker.train_loop_per_worker(config)`` [each worker], which fits the dense detector
(raydet.model) on batches that raydet.inputs builds from every object of every image. docs/TRAINING.md has the
measurements behind each choice.

- **Input path.** The driver ``materialize()``s both splits *before* the workers start: on a 2-CPU laptop a lazy
  read would wait forever for a CPU that the workers hold. Each worker pulls its train shard (an equal split) and
  the test split into memory once; every epoch runs from ``tf.data`` over those arrays.
- **Workers.** By default one per GPU (``--gpu``) or one per node with all of its CPUs (``worker_layout``);
  one worker trains under TF's default strategy, two or more under MultiWorkerMirroredStrategy.
- **Batch size is global.** Each of N workers takes ``batch_size // N`` images per step; the learning rate is for
  that global batch (scale it linearly). Per step a linear warm-up, per epoch a cosine decay to ``lr / 20``.
- **Validation.** Keras' ``val_*`` losses are exact means over the whole test split (each worker takes rows
  r, r+N, ..., padded with weight-0 rows). After each epoch rank 0 also decodes its float copy's predictions on
  up to ``VAL_AP_IMAGES`` test images and reports COCO AP50 and mAP (``val_ap50``, ``val_map``).
- **Checkpoints** hold the weights with the optimizer state, the clean float model, and the history so far.
  Resuming (same ``--out``/``--name``, or a restart after a worker failure) restores all three, so
  ``history.jsonl``, written by the driver from the newest checkpoint, holds each epoch exactly once.
- **Curves.** The driver draws ``RUN/curves.png`` from the history at the end; rank 0 writes each epoch's
  figures as TensorBoard scalars under ``RUN/tensorboard/`` as it goes (``tensorboard --logdir RUNS``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from raydet.config import ModelConfig, TrainConfig
from raydet.infer import FLOAT_FILE as FLOAT_MODEL
from raydet.infer import QAT_KERAS_FILE as QAT_MODEL
from raydet.runtime import init_ray, runtime_env
from raydet.shards import read_split
from raydet.train_worker import STATE_FILE, TENSORBOARD_DIR, train_loop_per_worker

CURVES_FILE = "curves.png"



QAT_CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class TrainSummary:
    run_dir: str  # RUNS/NAME, absolute
    model_path: str  # RUN/model.keras (RUN/model_qat.keras for a QAT run)
    history: tuple[dict, ...]  # one dict per epoch, as in history.jsonl
    trained_epochs: int  # epochs this call trained (0 when the run was already complete)


# ----------------------------------------------------------------------------------------------- driver
def read_manifest(prep: str | os.PathLike) -> dict:
    """PREP/manifest.json, checked: ValueError/FileNotFoundError naming the path when it is not a valid PREP."""
    prep = Path(prep)
    path = prep / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {prep} a folder written by `raydet prepare`?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    classes, size = manifest.get("classes"), manifest.get("image_size")
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: 'classes' must be a non-empty list, got {classes!r}")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"{path}: 'image_size' must be a positive integer, got {size!r}")
    for split in ("train", "test"):
        if not list((prep / split).glob("*.parquet")):
            raise FileNotFoundError(f"{prep / split}: no Parquet shards (expected {prep / split}/*.parquet)")
    return manifest


def worker_layout(cfg: TrainConfig, node_cpus: list[float], gpus: float) -> tuple[int, float]:
    """(workers, CPUs per worker) of a run: ``cfg``'s where given, else the fastest layout where it runs.

    ``node_cpus``: CPUs of each alive node; ``gpus``: GPUs in the cluster. Defaults: with ``use_gpu`` one worker
    per GPU (at least 1) with 1 CPU each; on CPU one worker per node holding the smallest node's CPUs (one
    worker with every core trains about twice as fast as two 1-CPU workers on the same machine).
    """
    nodes = [c for c in node_cpus if c >= 1] or [1.0]
    if cfg.workers is not None:
        return cfg.workers, cfg.cpus_per_worker or 1.0
    if cfg.use_gpu:
        return max(1, int(gpus)), cfg.cpus_per_worker or 1.0
    return len(nodes), cfg.cpus_per_worker or float(min(nodes))


def check_resources(cfg: TrainConfig, resources: dict, node_cpus: list[float]) -> None:
    """Refuse a request the cluster can never meet (Ray would wait forever), naming the numbers.

    ``cfg`` has its layout resolved (``worker_layout``); ``resources``: ``ray.cluster_resources()``;
    ``node_cpus``: CPUs of each alive node.
    """
    need_cpu = cfg.workers * cfg.cpus_per_worker
    have_cpu = float(resources.get("CPU", 0))
    if need_cpu > have_cpu:
        raise ValueError(f"--workers {cfg.workers} x --cpus-per-worker {cfg.cpus_per_worker:g} = {need_cpu:g} CPUs, "
                         f"but the cluster has {have_cpu:g} CPUs")
    if node_cpus and cfg.cpus_per_worker > max(node_cpus):
        raise ValueError(f"--cpus-per-worker {cfg.cpus_per_worker:g} is more than the largest node has "
                         f"({max(node_cpus):g} CPUs)")
    if cfg.batch_size < cfg.workers:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {cfg.workers} workers")
    if cfg.use_gpu:
        have_gpu = float(resources.get("GPU", 0))
        if cfg.workers > have_gpu:
            raise ValueError(f"--gpu with --workers {cfg.workers} needs {cfg.workers} GPUs (one per worker), "
                             f"but the cluster has {have_gpu:g} GPUs")


def resources_per_worker(cfg: TrainConfig) -> dict:
    """What each Train worker reserves: its CPUs, and one GPU when ``use_gpu``."""
    return {"CPU": cfg.cpus_per_worker, "GPU": 1} if cfg.use_gpu else {"CPU": cfg.cpus_per_worker}


ARCHITECTURE_FIELDS = ("backbone", "width", "max_width", "depth", "neck_width", "head_width", "bn_momentum")


def read_run_model_config(run: str | os.PathLike) -> dict:
    """RUN/config.json's ``model`` fields; ValueError for a run of the single-box network raydet had before its
    dense heads (its weights cannot start or be read as this network)."""
    path = Path(run) / "config.json"
    fields = json.loads(path.read_text())["model"]
    if "backbone" not in fields:
        raise ValueError(f"{run} was trained by an older raydet whose network predicted one box per image; "
                         f"it cannot be used with the dense detector: retrain it with this version")
    return fields


def model_config(cfg: TrainConfig, manifest: dict) -> ModelConfig:
    """The architecture: classes and input size from the manifest; backbone, width, depth from ``cfg``, or from
    the ``--init-from`` run (so its weights fit)."""
    arch = {"backbone": cfg.backbone, "width": cfg.width, "depth": cfg.depth}
    if cfg.init_from:
        init_cfg = read_run_model_config(cfg.init_from)
        arch = {k: init_cfg[k] for k in ARCHITECTURE_FIELDS if k in init_cfg}
    return ModelConfig(num_classes=len(manifest["classes"]), image_size=manifest["image_size"], **arch)


def _check_init_from(cfg: TrainConfig) -> None:
    if cfg.init_from:
        for name in ("config.json", FLOAT_MODEL):
            if not (Path(cfg.init_from) / name).is_file():
                raise FileNotFoundError(f"--init-from {cfg.init_from}: no {name} there (is it a finished RUN folder?)")


def train(cfg: TrainConfig, callbacks: tuple = ()) -> TrainSummary:
    """Train (or resume) the run ``cfg.out/cfg.name``; returns where the model is and the full history.

    ``callbacks``: extra Keras callbacks for every worker, as picklable factories ``f(rank, world,
    steps_per_epoch) -> tf_keras.callbacks.Callback`` (Ray ships them to the workers; a factory defined outside
    an installed package needs ``ray.cloudpickle.register_pickle_by_value`` on its module).

    Raises FileNotFoundError/ValueError for a bad PREP or an impossible resource request (before Ray
    Train starts), and ValueError when the loss becomes non-finite (naming the epoch).
    """
    manifest = read_manifest(cfg.prep)
    _check_init_from(cfg)
    if cfg.init_from:  # the workers run in other folders: a relative path would not be found there
        cfg = replace(cfg, init_from=str(Path(cfg.init_from).absolute()))
    mcfg = model_config(cfg, manifest)
    init_ray(cfg.address)
    import ray

    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    workers, cpus = worker_layout(cfg, nodes, float(resources.get("GPU", 0)))
    cfg = replace(cfg, workers=workers, cpus_per_worker=cpus)
    check_resources(cfg, resources, nodes)

    run_dir = Path(cfg.out).absolute() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({
        "classes": manifest["classes"], "image_size": manifest["image_size"], "model": asdict(mcfg),
        "train": asdict(cfg), "prep": str(Path(cfg.prep).absolute())}, indent=2) + "\n")

    started = time.time()
    result = _fit(cfg, mcfg, run_dir, tuple(callbacks))
    return _finish(cfg, run_dir, result, started)


def _fit(cfg: TrainConfig, mcfg: ModelConfig, run_dir: Path, callbacks: tuple):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    prep = Path(cfg.prep).absolute()
    # Materialized here, before the workers take their CPUs (docs/STACK.md: a lazy read hangs on 2 CPUs).
    print(f"reading {prep} ...", flush=True)
    datasets = {split: read_split(prep, split).materialize() for split in ("train", "test")}
    for ds in datasets.values():
        # The workers read their shards once, into memory, in about a second; the progress bar of that read was
        # left half-drawn and repeated on every later line of the output (seen in `raydet run`), so none is drawn.
        ds.context.enable_progress_bars = False
    n_train = datasets["train"].count()
    local_batch = cfg.batch_size // cfg.workers
    steps = (n_train // cfg.workers) // local_batch  # the equal split gives every worker n_train // workers rows
    if steps < 1:
        raise ValueError(f"{n_train} training images are fewer than one step of {cfg.workers} workers x "
                         f"{local_batch} images (--batch-size {cfg.batch_size}); lower --batch-size")
    loop_config = {
        "model": asdict(mcfg), "train": asdict(cfg), "steps_per_epoch": steps, "local_batch": local_batch,
        "n_test": datasets["test"].count(),
        "callbacks": callbacks,
        "tensorboard_dir": str(run_dir / TENSORBOARD_DIR),  # absolute: the workers run in other folders
        # QAT: the same first training images on every worker, to start the activation ranges (raydet.qat)
        "calibration": (datasets["train"].take_batch(QAT_CALIBRATION_IMAGES, batch_format="numpy")["image"]
                        if cfg.qat else None),
    }
    print(f"training on {n_train} images: {cfg.workers} workers x {local_batch} images per step "
          f"(global batch {local_batch * cfg.workers}), {steps} steps per epoch", flush=True)
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources_per_worker(cfg)),
        run_config=RunConfig(name=cfg.name, storage_path=str(run_dir.parent),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env=_worker_env(),
                             # Ray Train's own INFO lines (every checkpoint, every report with all its metrics, every
                             # shard) buried raydet's one line per epoch; Ray Train's system log files keep them.
                             logging_config=LoggingConfig(log_level="WARNING")),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),  # every worker gets the whole test split
    )
    return trainer.fit()


def _worker_env() -> dict:
    """raydet's runtime env, plus: Ray Train's own ``print`` patch off (it sends each print to a logger *and*, where
    Ray has replaced ``sys.stdout``, as in a worker, to stdout as well: every epoch line came out twice), and TF's
    C++ INFO lines off (gRPC servers, coordination barriers) unless the user set ``TF_CPP_MIN_LOG_LEVEL``."""
    env = runtime_env()
    return {**env, "env_vars": {**env["env_vars"], "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1")}}


def _finish(cfg: TrainConfig, run_dir: Path, result, started: float) -> TrainSummary:
    if result.checkpoint is None:
        raise RuntimeError(f"training of {run_dir} ended without a checkpoint (error: {result.error!r})")
    model_name = QAT_MODEL if cfg.qat else FLOAT_MODEL
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / STATE_FILE).read_text())
        history = state["history"]
        write_history(run_dir / "history.jsonl", history)
        bad = state.get("nonfinite")
        if bad:
            raise ValueError(f"loss became non-finite ({bad['loss']}) at epoch {bad['epoch']} of {run_dir}; "
                             f"history.jsonl keeps the {len(history)} good epochs (try a lower --lr)")
        if not (Path(ckpt) / model_name).is_file():
            raise RuntimeError(f"newest checkpoint {result.checkpoint.path} holds no {model_name}")
        shutil.copyfile(Path(ckpt) / model_name, run_dir / model_name)
    if cfg.qat:
        from raydet.qat import export_qat_tflite

        export_qat_tflite(run_dir)
    trained = sum(1 for row in history if row["end_time"] >= started)
    print(f"model: {run_dir / model_name}  ({len(history)} epochs; history: {run_dir / 'history.jsonl'})", flush=True)
    write_curves(run_dir, history)
    return TrainSummary(str(run_dir), str(run_dir / model_name), tuple(history), trained)


def write_curves(run_dir: Path, history: list[dict]) -> None:
    """``RUN/curves.png``: losses, val AP50 / mAP and learning rate per epoch (raydet.plots); a failure is
    printed, not raised (the model and history are written by now)."""
    from raydet import plots

    try:
        png = plots.training_curves(history)
        if png is not None:
            print(f"curves: {plots.write_png(run_dir / CURVES_FILE, png)}  "
                  f"(TensorBoard: tensorboard --logdir {run_dir.parent})", flush=True)
    except Exception as exc:  # noqa: BLE001 -- a picture of the history, which is saved
        print(f"curves.png failed ({type(exc).__name__}: {exc})", flush=True)


def write_history(path: Path, history: list[dict]) -> None:
    """One JSON object per epoch, rewritten whole from a checkpoint's history (so never duplicated)."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    tmp.replace(path)
