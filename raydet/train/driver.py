"""Data-parallel training with Ray Train's TensorflowTrainer (tf-keras, MultiWorkerMirroredStrategy).

``train(cfg)`` [driver, here] checks the PREP folder and the cluster, reads the Parquet shards with Ray Data and
runs ``raydet.train.worker.train_loop_per_worker(config)`` [each worker], which fits the dense detector
(raydet.detector.model) on batches that raydet.train.inputs builds from every object of every image. docs/TRAINING.md
has the measurements behind each choice.

- **Input path** (raydet.train.inputs, docs/TRAINING.md). Ray Data splits the train split equally between the workers.
  When a worker's rows fit ``--memory-budget-gb``, the driver ``materialize()``s the train split before the
  workers start and each worker pulls its shard into memory once; otherwise the workers stream their shards
  from a lazy read every epoch, whose tasks reserve no CPU when the workers hold every one (a task waiting for
  a CPU would wait forever on a 2-CPU laptop). Either way each worker runs ``(n_train // workers) // local_batch``
  steps per epoch.
- **Workers.** By default one per GPU (``--gpu``) or one per node with all of its CPUs (``worker_layout``);
  one worker trains under TF's default strategy, two or more under MultiWorkerMirroredStrategy.
- **Batch size is global.** Each of N workers takes ``batch_size // N`` images per step; the learning rate is for
  that global batch (scale it linearly). Per step a linear warm-up, per epoch a cosine decay to ``lr / 20``.
- **Validation.** Keras' ``val_*`` losses cover the whole test split: each worker reads its own ceil(n / N)
  consecutive rows from the files (padded with weight-0 rows). After each epoch rank 0 also decodes its float
  copy's predictions on the first ``VAL_AP_IMAGES`` test images (a read of its own) and reports COCO AP50 and
  mAP (``val_ap50``, ``val_map``).
- **Checkpoints** hold the weights with the optimizer state, the clean float model, and the history so far.
  Resuming (same ``--out``/``--name``, or a restart after a worker failure) restores all three, so
  ``history.jsonl``, written by the driver from the newest checkpoint, holds each epoch exactly once.
- **Curves.** The driver draws ``RUN/curves.png`` from the history at the end; rank 0 writes each epoch's
  figures as TensorBoard scalars under ``RUN/tensorboard/`` as it goes (``tensorboard --logdir RUNS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import ray
import ray.train
from ray.data import ExecutionOptions, ExecutionResources
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from raydet.cluster import storage
from raydet.cluster.nodes import check_visible
from raydet.cluster.resources import ensure_resources, read_autoscaler
from raydet.cluster.runtime import init_ray, runtime_env
from raydet.config import ModelConfig, TrainConfig
from raydet.errors import UserError, UserFileNotFoundError
from raydet.export.qat import export_qat_tflite
from raydet.export.run import Run
from raydet.ingest.prep import Prep
from raydet.ingest.shards import read_blocks, read_rows, split_rows
from raydet.report import plots
from raydet.train import heavy
from raydet.train.backend import TFConfigBackend
from raydet.train.inputs import load_rows, plan_inputs
from raydet.train.schedule import auto_epochs, checkpoint_every
from raydet.train.worker import CHECKPOINT_STATE_FILE, train_loop_per_worker, write_scalars

QAT_CALIBRATION_IMAGES = 64
STREAM_BLOCK_ROWS = 64  # rows per streamed block and read task: 9.6 MB at 224 px
# Streamed blocks Ray Data may hold per worker ahead of training (its object store limit): 8 x 9.6 MB at 224 px.
# Unlimited, it read ahead as far as its share of the object store allowed: the whole split of a small cluster's run.
STREAM_AHEAD_BLOCKS = 8
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train's; ``_polled_often``
HEALTH_CHECK_INTERVAL_S = "0.5"


@dataclass(frozen=True)
class TrainSummary:
    run_dir: str  # RUNS/NAME, absolute
    model_path: str  # RUN/model.keras (RUN/model_qat.keras for a QAT run)
    history: tuple[dict, ...]  # one dict per epoch, as in history.jsonl
    trained_epochs: int  # epochs this call trained (0 when the run was already complete)


# ----------------------------------------------------------------------------------------------- driver
def worker_layout(cfg: TrainConfig, node_cpus: list[float], gpus: float) -> tuple[int, float]:
    """(workers, CPUs per worker) of a run: ``cfg``'s where given, else the fastest layout where it runs.

    ``node_cpus``: CPUs of each alive node; ``gpus``: GPUs in the cluster. Defaults: with ``use_gpu`` one worker
    per GPU with 1 CPU each, or one worker when there is no GPU yet (an autoscaling cluster starts its first GPU
    node when asked: ``fit_to_cluster``); on CPU one worker per node holding the smallest node's CPUs (one
    worker with every core trains about twice as fast as two 1-CPU workers on the same machine).
    """
    nodes = [c for c in node_cpus if c >= 1] or [1.0]
    if cfg.workers is not None:
        return cfg.workers, cfg.cpus_per_worker or 1.0
    if cfg.use_gpu:
        return max(1, int(gpus)), cfg.cpus_per_worker or 1.0
    return len(nodes), cfg.cpus_per_worker or float(min(nodes))


def check_resources(cfg: TrainConfig, resources: dict, node_cpus: list[float], autoscaling: bool = False) -> None:
    """Refuse a request the cluster can never meet (Ray would wait forever), naming the numbers and flags.

    ``cfg`` has its layout resolved (``worker_layout``); ``resources``: ``ray.cluster_resources()``;
    ``node_cpus``: CPUs of each alive node; ``autoscaling``: the cluster may grow, so only the batch size is
    checked here (raydet.cluster.resources.ensure_resources checks what its autoscaler can launch).
    """
    if cfg.batch_size < cfg.workers:
        raise UserError(f"--batch-size {cfg.batch_size} is smaller than the {cfg.workers} workers")
    if autoscaling:
        return
    need_cpu = cfg.workers * cfg.cpus_per_worker
    have_cpu = float(resources.get("CPU", 0))
    if need_cpu > have_cpu:
        raise UserError(
            f"--workers {cfg.workers} x --cpus-per-worker {cfg.cpus_per_worker:g} = {need_cpu:g} CPUs, "
            f"but the cluster has {have_cpu:g} CPUs"
        )
    if node_cpus and cfg.cpus_per_worker > max(node_cpus):
        raise UserError(
            f"--cpus-per-worker {cfg.cpus_per_worker:g} is more than the largest node has ({max(node_cpus):g} CPUs)"
        )
    if cfg.use_gpu:
        have_gpu = float(resources.get("GPU", 0))
        if cfg.workers > have_gpu:
            raise UserError(
                f"--gpu with --workers {cfg.workers} needs {cfg.workers} GPUs (one per worker), "
                f"but the cluster has {have_gpu:g} GPUs"
            )


def resources_per_worker(cfg: TrainConfig) -> dict:
    """What each Train worker reserves: its CPUs, and one GPU when ``use_gpu``."""
    return {"CPU": cfg.cpus_per_worker, "GPU": 1} if cfg.use_gpu else {"CPU": cfg.cpus_per_worker}


def fit_to_cluster(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its layout resolved on the connected Ray (``worker_layout``), once the cluster can hold it.

    A fixed cluster that cannot hold the workers, or an autoscaling one whose node types never can, is refused at
    once (ValueError); an autoscaling one is asked for the nodes and waited for, up to ``cfg.resource_timeout_s``
    seconds (raydet.cluster.resources.ensure_resources).
    """

    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    autoscaler = read_autoscaler(cfg.address)
    gpus = float(resources.get("GPU", 0))
    if autoscaler and cfg.use_gpu and cfg.workers is None and not gpus:
        print(
            "no GPU node in the cluster yet: training with 1 worker and 1 GPU, asked of the autoscaler "
            "(--workers N for more)",
            flush=True,
        )
    workers, cpus = worker_layout(cfg, nodes, gpus)
    cfg = replace(cfg, workers=workers, cpus_per_worker=cpus)
    check_resources(cfg, resources, nodes, autoscaling=autoscaler is not None)
    what = f"--workers {cfg.workers} x --cpus-per-worker {cfg.cpus_per_worker:g}" + (" --gpu" if cfg.use_gpu else "")
    ensure_resources(
        [resources_per_worker(cfg)] * cfg.workers, what=what, timeout_s=cfg.resource_timeout_s, autoscaler=autoscaler
    )
    return cfg


ARCHITECTURE_FIELDS = ("backbone", "width", "max_width", "depth", "neck_width", "head_width", "bn_momentum")


def read_run_model_config(run: str | os.PathLike) -> dict:
    """RUN/config.json's ``model`` fields (RUN a path or URI); UserError as :meth:`Run.read_config`."""
    return Run(run).read_config(need=("model",))["model"]


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
        for name in (Run.CONFIG, Run.FLOAT_MODEL):
            if storage.kind(Run(cfg.init_from).file(name)) != "file":
                raise UserFileNotFoundError(
                    f"--init-from {cfg.init_from}: no {name} there (is it a finished RUN folder?)"
                )


def train(cfg: TrainConfig, callbacks: tuple = (), run_callbacks: tuple = ()) -> TrainSummary:
    """Train (or resume) the run ``cfg.out/cfg.name``; returns where the model is and the full history.

    ``callbacks``: extra Keras callbacks for every worker, as picklable factories ``f(rank, world,
    steps_per_epoch) -> tf_keras.callbacks.Callback`` (Ray ships them to the workers; a factory defined outside
    an installed package needs ``ray.cloudpickle.register_pickle_by_value`` on its module).
    ``run_callbacks``: Ray Train callbacks for the trainer's ``RunConfig`` (raydet.tune passes Tune's
    ``TuneReportCallback``, which sees each validated epoch's metrics).

    Raises FileNotFoundError/ValueError for a bad PREP, a RUN that a non-finite loss stopped before (RUN/stopped.json),
    an impossible resource request or one an autoscaler did not meet within ``cfg.resource_timeout_s`` (all before
    Ray Train starts), and ValueError when the loss becomes non-finite (naming the epoch).
    """
    manifest = Prep(cfg.prep).read_manifest()
    _check_init_from(cfg)
    # absolute: the workers run in other folders, where a relative path would not be found
    cfg = replace(
        cfg,
        prep=storage.normalize(cfg.prep),
        out=storage.normalize(cfg.out),
        init_from=storage.normalize(cfg.init_from) if cfg.init_from else None,
    )
    run_dir = storage.join(cfg.out, cfg.name)
    _refuse_stopped(run_dir)
    mcfg = model_config(cfg, manifest)
    init_ray(cfg.address)
    _check_visible(cfg)
    cfg = resolve_schedule(fit_to_cluster(cfg), manifest["splits"]["train"])

    storage.write_text(
        Run(run_dir).file(Run.CONFIG),
        json.dumps(
            {
                "classes": manifest["classes"],
                "image_size": manifest["image_size"],
                "model": asdict(mcfg),
                "train": asdict(cfg),
                "prep": cfg.prep,
            },
            indent=2,
        )
        + "\n",
    )

    started = time.time()
    result = _fit(cfg, mcfg, run_dir, tuple(callbacks), tuple(run_callbacks))
    return _finish(cfg, run_dir, result, started)


# what a stopped run's messages advise (`raydet run` starts a new run by itself when --lr changes)
_AFTER_A_STOP = "lower --lr and train a new run (another --name; `raydet run` starts one itself when --lr changes)"


def _refuse_stopped(run_dir: str) -> None:
    """UserError when RUN ended in a non-finite stop (RUN/stopped.json): its newest checkpoint holds no weights, so
    Ray Train would only start to report the same stop."""
    stopped = Run(run_dir).read_stopped()
    if stopped is not None:
        raise UserError(
            f"{run_dir} stopped at epoch {stopped.get('epoch')}: its loss became non-finite ({stopped.get('loss')}) "
            f"and its newest checkpoint holds no weights to go on from; {_AFTER_A_STOP}"
        )


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Optimizer steps in one epoch of ``cfg`` on ``n_train`` train images (0: too few for one batch): each of
    ``cfg.workers`` (resolved) workers steps through its share in local batches of ``batch_size // workers``."""
    return (n_train // cfg.workers) // (cfg.batch_size // cfg.workers)


def resolve_schedule(cfg: TrainConfig, n_train: int) -> TrainConfig:
    """``cfg`` with ``epochs`` (None: ``auto_epochs`` of the train split's steps), ``checkpoint_every`` (None:
    about ``CHECKPOINTS`` a run), ``warmup_epochs`` (at most ``epochs``) and ``precision`` (None: mixed_float16
    on GPUs, else float32) resolved; the schedule printed on one line.
    ``cfg.workers`` must be resolved (``fit_to_cluster``)."""

    steps = steps_per_epoch(cfg, n_train)
    epochs = cfg.epochs or auto_epochs(max(steps, 1))
    every = min(cfg.checkpoint_every or checkpoint_every(epochs), epochs)
    how = "" if cfg.epochs else f" (auto: about {max(steps, 1) * epochs} optimizer steps; --epochs to set)"
    print(f"schedule: {epochs} epochs of {steps} steps{how}, validation and checkpoint every {every}", flush=True)
    precision = cfg.precision or ("mixed_float16" if cfg.use_gpu and not cfg.qat else "float32")
    return replace(
        cfg, epochs=epochs, checkpoint_every=every, warmup_epochs=min(cfg.warmup_epochs, epochs), precision=precision
    )


def _check_visible(cfg: TrainConfig) -> None:
    """On a multi-node cluster, refuse local paths that are not the same folder on every node (raydet.cluster.nodes)."""

    check_visible(cfg.prep, write=False, what="PREP")
    check_visible(cfg.out, write=True, what="--out")
    if cfg.init_from:
        check_visible(cfg.init_from, write=False, what="--init-from")


def _fit(cfg: TrainConfig, mcfg: ModelConfig, run_dir: str, callbacks: tuple, run_callbacks: tuple = ()):
    TensorflowTrainer = heavy.tensorflow_trainer()
    prep = storage.normalize(cfg.prep)  # absolute: the workers run in other folders
    plan, n_train, n_test = _input_plan(cfg, prep, mcfg.image_size)
    local_batch = cfg.batch_size // cfg.workers
    loop_config = {
        "model": asdict(mcfg),
        "train": asdict(cfg),
        "prep": prep,
        "inputs": asdict(plan),
        "steps_per_epoch": plan.steps_per_epoch,
        "local_batch": local_batch,
        "n_test": n_test,
        "callbacks": callbacks,
        # rank 0 writes each epoch's scalars there; a run in a bucket gets them from the history at the end
        "tensorboard_dir": None if storage.is_uri(run_dir) else Run(run_dir).file(Run.TENSORBOARD),
        # QAT: the same first training images on every worker, to start the activation ranges (raydet.export.qat)
        "calibration": load_rows(prep, "train", 0, QAT_CALIBRATION_IMAGES)["image"] if cfg.qat else None,
    }
    print(
        f"training on {n_train} images: {cfg.workers} workers x {local_batch} images per step "
        f"(global batch {local_batch * cfg.workers}), {plan.steps_per_epoch} steps per epoch",
        flush=True,
    )
    # Held in memory, each worker reads its own rows from PREP (raydet.train.worker): no Ray Data at all
    streamed = _streamed_split(cfg, prep, plan) if plan.stream else {}
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources_per_worker(cfg)
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.out,  # a path or URI: checkpoints go to RUN
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env=_worker_env(),
            callbacks=list(run_callbacks),
            # Ray Train's own INFO lines (every checkpoint, every report with all its metrics, every
            # shard) buried raydet's one line per epoch; Ray Train's system log files keep them.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        tensorflow_config=TFConfigBackend(),  # TF_CONFIG as Ray's own, without TensorFlow in the controller
        **streamed,
    )
    with _polled_often():
        return trainer.fit()


@contextlib.contextmanager
def _polled_often():
    """Within the block, Ray Train's controller polls its workers every ``HEALTH_CHECK_INTERVAL_S`` (Ray's default
    is 2 s): it sees that training ended only at a poll, so every run waited up to one interval more before the
    driver had its result. Ray Train passes the variable from this process's environment to its controller (and
    the controller to the workers); a value the user set is kept."""
    if HEALTH_CHECK_ENV in os.environ:
        yield
        return
    os.environ[HEALTH_CHECK_ENV] = HEALTH_CHECK_INTERVAL_S
    try:
        yield
    finally:
        os.environ.pop(HEALTH_CHECK_ENV, None)


def _input_plan(cfg: TrainConfig, prep: str, image_size: int):
    """-> (raydet.train.inputs.InputPlan, train rows, test rows), counted from the Parquet footers; prints the choice.
    ValueError when the train split is smaller than one step."""

    n_train, n_test = (sum(rows for _, rows in split_rows(prep, split)) for split in ("train", "test"))
    # K, the same in every row of a split; the test split has its own (every object kept: docs/FORMATS.md)
    objects = next(read_rows(prep, "train", 0, 1))["labels"].shape[1]
    val_objects = next(read_rows(prep, "test", 0, 1))["labels"].shape[1] if n_test else None
    local_batch = cfg.batch_size // cfg.workers
    plan = plan_inputs(
        n_train, n_test, image_size, objects, cfg.workers, local_batch, cfg.memory_budget_gb, val_objects
    )
    if plan.steps_per_epoch < 1:
        raise UserError(
            f"{n_train} training images are fewer than one step of {cfg.workers} workers x "
            f"{local_batch} images (--batch-size {cfg.batch_size}); lower --batch-size"
        )
    how = "streamed from Ray Data" if plan.stream else "held in memory"
    print(
        f"input: {how} ({plan.worker_bytes / 1e9:.2f} GB of rows per worker, --memory-budget-gb "
        f"{cfg.memory_budget_gb:g})",
        flush=True,
    )
    return plan, n_train, n_test


def _streamed_split(cfg: TrainConfig, prep: str, plan) -> dict:
    """The ``datasets`` and ``dataset_config`` arguments of ``TensorflowTrainer`` that stream the train split from
    Ray Data, split equally between the workers (``plan``: raydet.train.inputs.InputPlan).

    Read lazily, by 1-CPU tasks where the workers leave a CPU free and by 0-CPU tasks sharing the workers' cores
    where they hold every one (a task waiting for a CPU that the workers hold waits forever: docs/STACK.md); Ray
    Data is limited to the CPUs the workers leave and to ``STREAM_AHEAD_BLOCKS`` blocks per worker in the object
    store.
    """

    held = cfg.workers * cfg.cpus_per_worker
    spare = float(ray.cluster_resources().get("CPU", 0)) - held
    ds = read_blocks(prep, "train", STREAM_BLOCK_ROWS, num_cpus=1.0 if spare >= 1 else 0.0)
    ahead = cfg.workers * STREAM_AHEAD_BLOCKS * STREAM_BLOCK_ROWS * plan.row_bytes
    limits = ExecutionOptions(resource_limits=ExecutionResources(cpu=max(spare, 0.0), object_store_memory=ahead))
    ds.context.enable_progress_bars = False  # a streamed read would redraw its bar every epoch
    return {
        "datasets": {"train": ds},
        "dataset_config": DataConfig(datasets_to_split=["train"], execution_options={"train": limits}),
    }


def _worker_env() -> dict:
    """raydet's runtime env, plus: Ray Train's own ``print`` patch off (it sends each print to a logger *and*, where
    Ray has replaced ``sys.stdout``, as in a worker, to stdout as well: every epoch line came out twice), and TF's
    C++ INFO lines off (gRPC servers, coordination barriers) unless the user set ``TF_CPP_MIN_LOG_LEVEL``."""
    env = runtime_env()
    return {
        **env,
        "env_vars": {
            **env["env_vars"],
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"),
        },
    }


def finish_from_checkpoint(cfg: TrainConfig, checkpoint_dir: str) -> TrainSummary:
    """Write RUN's model, history and curves from one of its checkpoint folders (``RUN/checkpoint_*``), as a
    finished ``train`` does: for a run stopped from outside (a Tune trial that ASHA ended), whose driver never got
    to. ``cfg``: the run's TrainConfig (``out``/``name`` name RUN). Raises as ``train``'s end does."""

    result = SimpleNamespace(checkpoint=ray.train.Checkpoint(checkpoint_dir), error=None)
    return _finish(cfg, storage.join(cfg.out, cfg.name), result, time.time())


def _finish(cfg: TrainConfig, run_dir: str, result, started: float) -> TrainSummary:
    """The newest checkpoint's model and history into RUN (a path or URI), then the QAT export and the curves. A
    non-finite stop's checkpoint gives the history and RUN/stopped.json, then UserError naming the epoch."""
    if result.checkpoint is None:
        raise RuntimeError(f"training of {run_dir} ended without a checkpoint (error: {result.error!r})")
    model_name = Run.QAT_MODEL if cfg.qat else Run.FLOAT_MODEL
    with storage.local_copy(run_dir, fetch=[Run.CONFIG]) as local:
        with result.checkpoint.as_directory() as ckpt:
            state = json.loads((Path(ckpt) / CHECKPOINT_STATE_FILE).read_text())
            history = state["history"]
            write_history(Run(local).local(Run.HISTORY), history)
            bad = state.get("nonfinite")
            if bad:  # recorded in RUN (uploaded, for a bucket), then raised below
                stop = {"epoch": bad["epoch"], "loss": str(bad["loss"])}  # "nan" or "inf": plain JSON
                Run(local).local(Run.STOPPED).write_text(json.dumps(stop) + "\n")
            elif not (Path(ckpt) / model_name).is_file():
                raise RuntimeError(f"newest checkpoint {result.checkpoint.path} holds no {model_name}")
            else:
                shutil.copyfile(Path(ckpt) / model_name, local / model_name)
        if not bad:
            _export_and_draw(cfg, run_dir, local, history)
    if bad:
        raise UserError(
            f"loss became non-finite ({bad['loss']}) at epoch {bad['epoch']} of {run_dir}; {Run.HISTORY} keeps the "
            f"{len(history)} good epochs ({_AFTER_A_STOP})"
        )
    trained = sum(1 for row in history if row["end_time"] >= started)
    return TrainSummary(run_dir, Run(run_dir).file(model_name), tuple(history), trained)


def _export_and_draw(cfg: TrainConfig, run_dir: str, local: Path, history: list[dict]) -> None:
    """After a run's model is in the local RUN folder ``local`` (standing for ``run_dir``): the QAT export, the
    printed location, TensorBoard scalars for a bucket's run, the curves."""
    if cfg.qat:
        export_qat_tflite(local)
    model = Run(run_dir).file(Run.QAT_MODEL if cfg.qat else Run.FLOAT_MODEL)
    print(f"model: {model}  ({len(history)} epochs; history: {Run(run_dir).file(Run.HISTORY)})", flush=True)
    if storage.is_uri(run_dir):
        write_tensorboard(Run(local).local(Run.TENSORBOARD), history)
    write_curves(local, history, shown=run_dir)


def write_tensorboard(folder: Path, history: list[dict]) -> None:
    """Every epoch of ``history`` as TensorBoard scalars in ``folder`` (what rank 0 writes as it goes, for a run
    whose folder is a URI, which TensorFlow's file writer cannot reach)."""
    writer = heavy.tf().summary.create_file_writer(str(folder))
    for row in history:
        write_scalars(writer, row)
    writer.close()


def write_curves(run_dir: Path, history: list[dict], shown: str | None = None) -> None:
    """``RUN/curves.png``: losses, val AP50 / mAP and learning rate per epoch (raydet.report.plots); a failure is
    printed, not raised (the model and history are written by now). ``shown``: RUN as the user named it (a URI
    whose local copy ``run_dir`` is), for the message."""

    shown = shown or str(run_dir)
    try:
        png = plots.training_curves(history)
        if png is not None:
            plots.write_png(Run(run_dir).local(Run.CURVES), png)
            print(
                f"curves: {Run(shown).file(Run.CURVES)}  "
                f"(TensorBoard: tensorboard --logdir {posixpath.dirname(storage.normalize(shown))})",
                flush=True,
            )
    except Exception as exc:  # a picture of the history, which is saved
        print(f"{Run.CURVES} failed ({type(exc).__name__}: {exc})", flush=True)


def write_history(path: Path, history: list[dict]) -> None:
    """One JSON object per epoch, rewritten whole from a checkpoint's history (so never duplicated)."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    tmp.replace(path)
