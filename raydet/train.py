"""Data-parallel training with Ray Train's TensorflowTrainer (tf-keras, MultiWorkerMirroredStrategy).

``train(cfg)`` [driver] checks the PREP folder and the cluster, reads the Parquet shards with Ray Data and runs
``train_loop_per_worker(config)`` [each worker], which fits the dense detector (raydet.model) on batches that
raydet.inputs builds from every object of every image. docs/TRAINING.md has the measurements behind each choice.

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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from raydet.config import ModelConfig, TrainConfig
from raydet.inputs import objects_of
from raydet.runtime import init_ray, runtime_env, use_legacy_keras
from raydet.shards import read_split

STATE_FILE = "state.json"  # in each checkpoint: {"history": [...], "nonfinite": null | {"epoch", "loss"}}
WEIGHTS_PREFIX = "weights/ckpt"  # TF-format weights + optimizer state, in each checkpoint
FLOAT_MODEL = "model.keras"
QAT_MODEL = "model_qat.keras"
# Test hooks, read by the driver and passed to the workers (never set in normal use):
FAIL_ONCE_ENV = "RAYDET_TEST_FAIL_ONCE"  # marker file path: the last worker os._exit(1)s once, mid epoch 2
CHECKSUM_DIR_ENV = "RAYDET_TEST_CHECKSUM_DIR"  # each worker writes rank<r>.json with its weights' sha256


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


def train(cfg: TrainConfig) -> TrainSummary:
    """Train (or resume) the run ``cfg.out/cfg.name``; returns where the model is and the full history.

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
    result = _fit(cfg, mcfg, manifest, run_dir)
    return _finish(cfg, run_dir, result, started)


def _fit(cfg: TrainConfig, mcfg: ModelConfig, manifest: dict, run_dir: Path):
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
        "hooks": {"fail_once": os.environ.get(FAIL_ONCE_ENV), "checksum_dir": os.environ.get(CHECKSUM_DIR_ENV)},
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
    return TrainSummary(str(run_dir), str(run_dir / model_name), tuple(history), trained)


def write_history(path: Path, history: list[dict]) -> None:
    """One JSON object per epoch, rewritten whole from a checkpoint's history (so never duplicated)."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- worker
def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build (or restore) the model under MultiWorkerMirroredStrategy (TF's default strategy
    when it is the only worker) and fit.

    ``config``: ``model`` (ModelConfig fields), ``train`` (TrainConfig fields), ``steps_per_epoch``,
    ``local_batch``, ``n_test``, ``hooks`` (test hooks, normally None).
    """
    use_legacy_keras()
    import ray.train
    import tensorflow as tf

    from raydet.model import build_model

    tf.get_logger().setLevel("ERROR")  # MWMS logs every collective at INFO: thousands of lines
    _quiet_worker_logs()
    tcfg = config["train"]
    # One intra-op thread per reserved CPU: two workers on two cores must not each spin two threads.
    tf.config.threading.set_intra_op_parallelism_threads(max(1, round(tcfg["cpus_per_worker"])))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # One worker has nothing to all-reduce with, and MultiWorkerMirroredStrategy's collectives cost it 7-8% per
    # epoch (synth 64 px, 2 CPUs: 733-748 against 793-802 img/s), so it trains under TF's default strategy.
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    tf.keras.utils.set_random_seed(tcfg["seed"] + rank)  # different shuffles per worker, same init below

    from raydet.inputs import load_split, train_dataset, val_dataset
    from raydet.model import OUTPUT_STRIDE

    mcfg = ModelConfig(**config["model"])
    grid = mcfg.image_size // OUTPUT_STRIDE
    train_arrays = load_split(ray.train.get_dataset_shard("train"))
    test_arrays = load_split(ray.train.get_dataset_shard("test"))
    local_batch = config["local_batch"]
    train_ds = strategy.distribute_datasets_from_function(lambda _: train_dataset(
        train_arrays, mcfg.num_classes, grid, local_batch, tcfg["augment"], tcfg["seed"] + rank))
    val_ds, val_steps = val_dataset(test_arrays, mcfg.num_classes, grid, local_batch, rank, world)
    val_ds = strategy.distribute_datasets_from_function(lambda _: val_ds)

    checkpoint = ray.train.get_checkpoint()
    # The export copy is built here, outside the strategy's scope: variables made inside it (fit runs
    # callbacks inside it) are mirrored, and creating them on one worker alone waits forever for the rest.
    # It holds each epoch's weights for the saved model and for rank 0's validation AP.
    export = build_model(mcfg)
    if tcfg["qat"]:
        from raydet.qat import apply_qat

        export = apply_qat(export)
    with strategy.scope():
        model, history = _build(mcfg, tcfg, checkpoint)
    initial_epoch = len(history)
    if initial_epoch >= tcfg["epochs"]:
        if rank == 0:
            print(f"run already has {initial_epoch} epochs (asked for {tcfg['epochs']}): nothing to train", flush=True)
        return

    validation = ValidationAP(test_arrays, mcfg.num_classes) if rank == 0 else None
    reporter = _EpochReporter(model, export, tcfg, history, rank, validation)
    callbacks = [_StepLR(tcfg["lr"], tcfg["epochs"], config["steps_per_epoch"], tcfg["warmup_epochs"]),
                 reporter]
    if config["hooks"]["fail_once"]:
        callbacks.append(_FailOnce(config["hooks"]["fail_once"], rank, world, config["steps_per_epoch"]))
    model.fit(train_ds, epochs=tcfg["epochs"], initial_epoch=initial_epoch, steps_per_epoch=config["steps_per_epoch"],
              validation_data=val_ds, validation_steps=val_steps, callbacks=callbacks, verbose=0)
    if config["hooks"]["checksum_dir"]:
        Path(config["hooks"]["checksum_dir"], f"rank{rank}.json").write_text(
            json.dumps({"rank": rank, "sha256": weights_sha256(model.trainable_weights)}))


def _quiet_worker_logs() -> None:
    """Keep the worker's output to raydet's one line per epoch. TF's checkpoint saver logs every save through absl
    at INFO ("Sharding callback duration"), and Ray Train 2.60 logs every report, with all its metrics and from every
    worker, through a logger named after its source file, which ``LoggingConfig`` does not reach."""
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: its lines stay
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _build(mcfg: ModelConfig, tcfg: dict, checkpoint):
    """Model + optimizer, restored from ``checkpoint`` or started from ``--init-from``; returns (model, history)."""
    import tf_keras

    from raydet.model import build_model, compile_model

    model = build_model(mcfg)
    history: list[dict] = []
    if tcfg["init_from"] and checkpoint is None:
        transfer_weights(tf_keras.models.load_model(Path(tcfg["init_from"]) / FLOAT_MODEL, compile=False), model)
    if tcfg["qat"]:
        from raydet.qat import apply_qat

        model = apply_qat(model)
    optimizer = make_optimizer(tcfg["lr"], tcfg["weight_decay"], tcfg["clip_norm"])
    compile_model(model, optimizer, heatmap_weight=tcfg["heatmap_loss_weight"],
                  offset_weight=tcfg["offset_loss_weight"], size_weight=tcfg["size_loss_weight"],
                  giou_weight=tcfg["giou_loss_weight"])
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt:
            state = json.loads((Path(ckpt) / STATE_FILE).read_text())
            history = state["history"]
            if history:  # an epoch-1 non-finite checkpoint holds no weights
                optimizer.build(model.trainable_variables)  # so the optimizer state restores now, not lazily
                model.load_weights(str(Path(ckpt) / WEIGHTS_PREFIX)).assert_existing_objects_matched()
    return model, history


def make_optimizer(lr: float, weight_decay: float, clip_norm: float):
    """The training optimizer: AdamW, the global gradient norm clipped to ``clip_norm`` (0: not clipped).

    tf_keras clips after the cross-worker all-reduce (it aggregates, then clips), so every worker applies the
    same clipped step and the replicas stay identical.
    """
    import tf_keras

    return tf_keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay, global_clipnorm=clip_norm or None)


def transfer_weights(source, target) -> None:
    """Copy every layer's weights from ``source`` to the same-named layer of ``target`` where shapes match
    (a pretrained run with other classes or another input size keeps its conv blocks); prints what moved."""
    moved, skipped = [], []
    for layer in target.layers:
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            continue
        weights = src.get_weights()
        if weights and [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(weights)
            moved.append(layer.name)
        elif weights:
            skipped.append(layer.name)
    print(f"init-from: copied {len(moved)} layers, kept fresh {skipped or 'none'} (shapes differ)", flush=True)


def cosine_lr(lr: float, epoch: int, epochs: int, floor: float = 0.05) -> float:
    """Learning rate of 0-based ``epoch``: cosine from ``lr`` (epoch 0) down to ``floor * lr`` (last epoch)."""
    t = epoch / max(epochs - 1, 1)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def step_lr(lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float) -> float:
    """Learning rate of 0-based ``step`` in 0-based ``epoch``: the epoch's cosine rate (:func:`cosine_lr`), scaled
    by a linear warm-up over the first ``warmup_epochs`` epochs: (steps done + 1) / warm-up steps, up to 1."""
    base = cosine_lr(lr, epoch, epochs)
    warmup_steps = warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step
    return base if done + 1 >= warmup_steps else base * (done + 1) / warmup_steps


def _StepLR(lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float):  # noqa: N802 - built lazily (TF)
    """Keras callback setting :func:`step_lr` before each step (while warming up) and at each epoch's start."""
    import tf_keras

    class StepLR(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self._set(0)

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch < warmup_epochs:  # only epochs that hold warm-up steps pay a per-step call
                self._set(batch)

        def _set(self, step: int) -> None:
            tf_keras.backend.set_value(self.model.optimizer.learning_rate,
                                       step_lr(lr, self.epoch, step, steps_per_epoch, epochs, warmup_epochs))

    return StepLR()


def weights_sha256(variables) -> str:
    """sha256 over the bytes of each variable's value, in order: equal on workers that hold equal weights."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update(v.numpy().tobytes())
    return digest.hexdigest()


VAL_AP_IMAGES = 500  # test images rank 0 decodes after each epoch for val_ap50 / val_map (the first ones in order)


class ValidationAP:
    """COCO AP50 and mAP@[.5:.95] of a float model on up to ``VAL_AP_IMAGES`` rows of ``arrays``
    (raydet.inputs arrays), decoded as evaluation decodes them; boxes compared in normalized xyxy."""

    def __init__(self, arrays: dict, num_classes: int, limit: int = VAL_AP_IMAGES):
        n = min(limit, len(arrays["image"]))
        self.images = arrays["image"][:n]
        self.truth = [objects_of(arrays, i) for i in range(n)]
        self.num_classes = num_classes

    def __call__(self, model, chunk: int = 64) -> dict[str, float]:
        """``model`` (a tf_keras detector) predicts the rows in chunks; -> ``score`` of its outputs."""
        import tensorflow as tf

        # A plain call in a tf.function, not ``predict``: Keras' predict runs under the distribution strategy of the
        # surrounding fit (callbacks run inside its scope) and would wait for the other workers' collectives.
        forward = tf.function(lambda x: model(x, training=False))
        chunks = [forward(self.images[i:i + chunk].astype("float32")) for i in range(0, len(self.images), chunk)]
        return self.score({k: np.concatenate([c[k].numpy() for c in chunks]) for k in ("heatmap", "boxes")})

    def score(self, outputs: dict) -> dict[str, float]:
        """``heatmap`` (n, G, G, C) and ``boxes`` (n, G, G, 4) of the rows, in order -> {val_ap50, val_map}."""
        from raydet.decode import decode
        from raydet.metrics import MatchStats, detection_summary, match_image

        parts = []
        for i, det in enumerate(decode(outputs["heatmap"][:len(self.truth)], outputs["boxes"][:len(self.truth)])):
            boxes, labels, difficult = self.truth[i]
            parts.append(match_image(boxes, labels, det.boxes, det.labels, det.scores, self.num_classes,
                                     image_id=i, gt_difficult=difficult))
        summary = detection_summary(MatchStats.concat(parts))
        return {"val_ap50": summary["coco_map_50"], "val_map": summary["coco_map"]}


def _metrics_row(epoch: int, epochs: int, logs: dict, lr: float, seconds: float) -> dict:
    """Keras's multi-output log names -> the history names of docs/FORMATS.md."""
    names = {"loss": "loss", "heatmap_loss": "heatmap_loss", "boxes_loss": "box_loss"}
    row = {"epoch": epoch, "epochs": epochs}
    for keras_name, name in names.items():
        for prefix in ("", "val_"):
            if prefix + keras_name in logs:
                row[prefix + name] = float(logs[prefix + keras_name])
    # seconds: train + validation of this epoch; end_time (unix): lets benchmarks time whole epochs.
    row.update(lr=lr, seconds=round(seconds, 3), end_time=time.time())
    return row


def format_row(row: dict) -> str:
    """The one readable line per epoch."""
    nan = float("nan")
    return (f"epoch {row['epoch']}/{row['epochs']}  loss {row['loss']:.4f} (heatmap {row.get('heatmap_loss', nan):.3f} "
            f"box {row.get('box_loss', nan):.3f})  val_loss {row.get('val_loss', nan):.4f}  "
            f"val_AP50 {row.get('val_ap50', nan):.3f}  val_mAP {row.get('val_map', nan):.3f}  "
            f"lr {row['lr']:.2e}  {row['seconds']:.1f}s")


def _make_reporter_class():
    import ray.train
    import tf_keras

    class EpochReporter(tf_keras.callbacks.Callback):
        """After each epoch: check the loss, copy the weights into the plain (non-distributed) ``export`` model
        (every worker: synced variables are read collectively), let rank 0 measure ``validation`` on it, save a
        checkpoint (rank 0's folder is the one reported), report the metrics."""

        def __init__(self, model, export, tcfg: dict, history: list[dict], rank: int, validation=None):
            super().__init__()
            self.net, self.export, self.tcfg, self.history, self.rank = model, export, tcfg, history, rank
            self.validation = validation
            self.last_dir: str | None = None  # newest good checkpoint folder of this worker
            self.t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0
            lr = float(tf_keras.backend.get_value(self.net.optimizer.learning_rate))
            row = _metrics_row(epoch + 1, self.tcfg["epochs"], logs or {}, lr, seconds)
            if not all(math.isfinite(row.get(k, 0.0)) for k in ("loss", "val_loss")):
                self._report_nonfinite(row)
                return
            self.export.set_weights(self.net.get_weights())
            if self.validation is not None:
                row.update(self.validation(self.export))
            self.history.append(row)
            folder = tempfile.mkdtemp(prefix=f"raydet-ckpt-r{self.rank}-")
            self._save(folder)
            if self.rank == 0:
                print(format_row(row), flush=True)
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder) if self.rank == 0 else None)
            if self.rank != 0:  # only rank 0's folder is reported (uploaded); the others were for the collectives
                shutil.rmtree(folder, ignore_errors=True)
                return
            if self.last_dir:
                shutil.rmtree(self.last_dir, ignore_errors=True)
            self.last_dir = folder  # kept until the next one: a non-finite epoch re-reports it

        def on_train_end(self, logs=None):
            if self.last_dir:
                shutil.rmtree(self.last_dir, ignore_errors=True)

        def _save(self, folder: str) -> None:
            self.net.save_weights(str(Path(folder) / WEIGHTS_PREFIX))
            if self.tcfg["qat"]:
                self.net.save(str(Path(folder) / QAT_MODEL), save_format="keras_v3")
            else:
                # the export copy has no compile state, so model.keras loads without custom objects
                if self.rank == 0:
                    # save_format named: tf_keras keeps "use the .keras format" in a thread-local that its
                    # own save/load reset to False, so a second save in Ray's training thread wrote HDF5.
                    self.export.save(str(Path(folder) / FLOAT_MODEL), save_format="keras_v3")
            Path(folder, STATE_FILE).write_text(json.dumps({"history": self.history, "nonfinite": None}))

        def _report_nonfinite(self, row: dict) -> None:
            """Stop everywhere; re-report the last good weights with a marker the driver turns into an error."""
            self.net.stop_training = True
            if self.rank != 0:
                ray.train.report(row, checkpoint=None)
                return
            folder = self.last_dir = self.last_dir or tempfile.mkdtemp(prefix="raydet-ckpt-r0-")  # freed at train end
            Path(folder, STATE_FILE).write_text(json.dumps({
                "history": self.history,
                "nonfinite": {"epoch": row["epoch"], "loss": row["loss"]}}))
            print(f"loss became non-finite ({row['loss']}) at epoch {row['epoch']}: stopping", flush=True)
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder))

    return EpochReporter


def _EpochReporter(*args, **kwargs):  # noqa: N802 - a class built lazily so this module imports without TF
    return _make_reporter_class()(*args, **kwargs)


def _FailOnce(marker: str, rank: int, world: int, steps: int):  # noqa: N802
    """Test hook: the last worker ends its process (``os._exit(1)``, no clean-up) halfway through epoch 2,
    once: the marker file records that it happened."""
    import tf_keras

    class FailOnce(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == steps // 2 and rank == world - 1 and not os.path.exists(marker):
                Path(marker).write_text(f"killed rank {rank} at epoch 2 step {batch + 1}\n")
                os._exit(1)

    return FailOnce()
