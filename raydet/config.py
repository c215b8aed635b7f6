"""Typed configuration, one frozen dataclass per stage.

Every config validates itself in ``__post_init__`` and raises ``UserError`` (a ``ValueError``) naming the bad
value, so a command with bad arguments stops before any work (or any Ray start-up) happens. Configs become dicts only
at the ``train_loop_config`` boundary (``dataclasses.asdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from raydet.errors import UserError

QUANT_MODES = ("dynamic", "float16", "int8")
# Seconds a stage waits for an autoscaler to add the nodes it needs (raydet.cluster.resources): booting a cloud instance
# and running cluster.yaml's setup commands (a TensorFlow install with CUDA) takes minutes, not seconds.
RESOURCE_TIMEOUT_S = 900.0
# Keras mixed-precision policies the training model may run under (TrainConfig.precision)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODEL_NAMES = ("float",) + QUANT_MODES + ("qat",)


PILLOW_PIXEL_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


def check_max_pixels(name: str, value: int) -> None:
    """UserError naming ``name`` unless ``value`` is a pixel limit raydet can honour (1..PILLOW_PIXEL_LIMIT)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PILLOW_PIXEL_LIMIT:
        raise UserError(
            f"{name} must be a whole number of pixels from 1 to {PILLOW_PIXEL_LIMIT:,} (Pillow's own "
            f"decompression-bomb limit), got {value!r}"
        )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{name} must be positive, got {value!r}")


def _fraction(name: str, value: float, *, low_open: bool = False) -> None:
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        raise UserError(f"{name} must be in {'(0, 1)' if low_open else '[0, 1)'}, got {value!r}")


@dataclass(frozen=True)
class SynthConfig:
    out: str
    images: int = 3000  # enough for the 15-epoch `raydet run` (docs/TRAINING.md); 1,000 were too few
    image_size: int = 128  # pixels of the written JPEGs (square); prepare resizes them again
    classes: int = 4  # at least 4 shape classes are always available
    max_objects: int = 6  # objects per image: 1 to max_objects, drawn uniformly (a dense detector's data)
    seed: int = 0  # same seed -> byte-identical dataset
    test_fraction: float = 0.2  # written as ImageSets/Main/{train,test}.txt
    # (min, max) of an object's longer box side as a fraction of the image side; several objects in one image
    # shrink the max so they fit. Small objects included by default; pretraining for photos whose objects fill
    # most of the frame: e.g. max_objects 1, (0.35, 0.95).
    object_size: tuple[float, float] = (0.12, 0.6)

    def __post_init__(self) -> None:
        _positive("--images", self.images)
        if self.image_size < 32:
            raise UserError(f"--image-size must be at least 32 pixels, got {self.image_size!r}")
        if not 1 <= self.classes <= 8:
            raise UserError(f"--classes must be between 1 and 8, got {self.classes!r}")
        _positive("--max-objects", self.max_objects)
        _fraction("--test-fraction", self.test_fraction)
        low, high = self.object_size
        if not 0.05 <= low <= high <= 1.0:
            raise UserError(
                f"--object-size must be MIN,MAX with 0.05 <= MIN <= MAX <= 1 (fractions of the image "
                f"side), got {low!r},{high!r}"
            )


def parse_object_size(text: str) -> tuple[float, float]:
    """``"0.35,0.95"`` -> ``(0.35, 0.95)``; anything else raises ValueError naming the text (the range itself is
    checked by SynthConfig)."""
    parts = text.split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise UserError(
            f"malformed --object-size {text!r}: expected MIN,MAX fractions of the image side, e.g. 0.2,0.7"
        ) from None
    return low, high


@dataclass(frozen=True)
class PrepareConfig:
    data: str  # local path or any URI pyarrow's filesystems open (file://, s3://, gs://)
    out: str
    # square side the images are resized to (boxes stay normalized); None: chosen from the boxes
    # (raydet.ingest.prepare.choose_image_size: the smallest of IMAGE_SIZES that gives most objects AUTO_MIN_OBJECT_PX)
    image_size: int | None = None
    classes: tuple[str, ...] | None = None  # None: every class name found, sorted
    test_fraction: float = 0.2  # used only when the dataset has no split of its own
    # objects kept per train image at most (COCO's detections per image), the largest ones; the rest are counted
    # in the manifest's objects_skipped. Test images keep every object (evaluation's ground truth is whole). Each
    # split's rows are padded to its own K = the largest count kept in any of its images (docs/FORMATS.md).
    max_objects: int = 100
    address: str | None = None  # Ray address; None: RAY_ADDRESS or a fresh local Ray
    # Files over these sizes are skipped unread (a reason in the manifest). A VOC XML is a few KB, so 1 MiB is
    # far above any real annotation; 64 MiB is above any photo (a 100 MP JPEG is ~30 MB) and bounds a task's memory.
    max_xml_bytes: int = 2**20
    max_image_bytes: int = 64 * 2**20
    # Images whose header gives more pixels are skipped undecoded (raydet.ingest.images.MAX_PIXELS: 100 MP); it also
    # sets the memory each decode task declares to Ray (raydet.ingest.prepare.decode_task_memory, docs/INGEST.md).
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.image_size is not None:
            _positive("--image-size", self.image_size)
        _fraction("--test-fraction", self.test_fraction)
        _positive("--max-objects", self.max_objects)
        _positive("--max-xml-bytes", self.max_xml_bytes)
        _positive("--max-image-bytes", self.max_image_bytes)
        check_max_pixels("--max-pixels", self.max_pixels)
        if self.classes is not None and not self.classes:
            raise UserError("--classes must name at least one class")


# the EfficientNet-Lite names are raydet.detector.efficientnet_lite.VARIANTS' keys
BACKBONE_NAMES = ("cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    image_size: int  # taken from the manifest; a multiple of 32 (the deepest map is stride 32)
    backbone: str = "cnn"  # raydet.detector.model.BACKBONES
    pretrained: bool = True  # efficientnet_lite*: start from its ImageNet weights (the cnn has none)
    width: int = 16  # cnn: filters of the first block; doubles per block up to max_width (16 fits a 2-core laptop)
    max_width: int = 256
    depth: int = 5  # cnn: conv blocks, each Conv(no bias) -> BN -> ReLU -> MaxPool (QAT-friendly order)
    neck_width: int = 64  # channels of the top-down path back to stride 4
    head_width: int = 64  # channels of each head's 3x3 conv
    # Keras' 0.99 averages over ~100 steps; a 15-epoch run of ~75 steps/epoch needs BN statistics that keep up.
    bn_momentum: float = 0.9

    def __post_init__(self) -> None:
        _positive("num_classes", self.num_classes)
        _positive("image_size", self.image_size)
        if self.backbone not in BACKBONE_NAMES:
            raise UserError(f"--backbone must be one of {BACKBONE_NAMES}, got {self.backbone!r}")
        for name in ("width", "max_width", "depth", "neck_width", "head_width"):
            _positive(name, getattr(self, name))
        if self.depth < 3:
            raise UserError(f"depth must be at least 3 (the neck starts at stride 8 or deeper), got {self.depth!r}")
        multiple = 32 if self.backbone != "cnn" else max(32, 2**self.depth)
        if self.image_size % multiple:
            raise UserError(
                f"image size {self.image_size} must be a multiple of {multiple} for this network "
                f"(prepare the data with --image-size {max(multiple, self.image_size // multiple * multiple)})"
            )
        if not 0.0 < self.bn_momentum < 1.0:
            raise UserError(f"bn_momentum must be in (0, 1), got {self.bn_momentum!r}")


@dataclass(frozen=True)
class TrainConfig:
    prep: str  # folder written by `raydet prepare`
    out: str  # RUNS folder; the run lives in out/name
    name: str
    # None: the fastest layout where it runs (raydet.train.driver.worker_layout): one worker per GPU with --gpu, else
    # one worker per node holding that node's CPUs (two 1-CPU workers on one 2-core machine train at about half the
    # speed of one 2-CPU worker: benchmarks/train.py).
    workers: int | None = None
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # None: with workers None, every CPU of a node; else 1
    # None: sized from the train split (raydet.train.schedule.auto_epochs), so a small and a large set both get enough
    # optimizer steps and no more; recorded resolved in RUN/config.json
    epochs: int | None = None
    batch_size: int = 16  # global: each of N workers takes batch_size / N per step (docs/TRAINING.md)
    lr: float = 1e-3  # for the global batch size; scale linearly with it (see README)
    weight_decay: float = 1e-4
    # Scale the global gradient (after the all-reduce) down to this L2 norm when it is larger; 0: no clipping.
    # A large early step can push sigmoid outputs into saturation, where their gradient vanishes (docs/TRAINING.md).
    clip_norm: float = 1.0
    # The learning rate climbs linearly from lr / steps to lr over the first ``warmup_epochs`` epochs (per step);
    # 0: no warm-up (docs/TRAINING.md: clipping alone did not prevent the saturation).
    warmup_epochs: float = 3.0  # Ultralytics' 3; clamped to the epochs of a short run
    # Loss weights (raydet.detector.model.compile_model): focal loss on the heatmap; at object centres L1 on the offset
    # (cells) and 1 - GIoU of the box; L1 on w, h (normalized) over each object's Gaussian, weighted to sum to 1
    # (less where a smaller object takes some of its cells).
    heatmap_loss_weight: float = 1.0
    offset_loss_weight: float = 1.0
    size_loss_weight: float = 5.0
    giou_loss_weight: float = 2.0
    augment: bool = True
    # what augment does (AugmentConfig, defined at the end of this module: the lambda looks it up when a config is
    # made); the worker ignores it when augment is False
    augmentation: AugmentConfig = field(default_factory=lambda: AugmentConfig())
    # the last epochs train without mosaic (Ultralytics' close_mosaic: whole images again, as inference sees them)
    close_mosaic: int = 10
    qat: bool = False  # quantization-aware training (tensorflow-model-optimization)
    init_from: str | None = None  # a RUN folder whose float weights start this run (e.g. QAT fine-tune)
    max_failures: int = 2  # worker failures survived by restarting from the newest checkpoint
    seed: int = 0
    address: str | None = None
    # ModelConfig.backbone; the ImageNet-pretrained backbone is the default for photos (docs/TRAINING.md); the
    # synthetic `raydet run` trains the from-scratch cnn (raydet.pipeline.SYNTH_RECIPE)
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True  # ModelConfig.pretrained
    # decay of the exponential moving average of the weights that validation, model.keras and quantization use
    # (raydet.train.ema, ramped over its first steps); 0: no average
    ema_decay: float = 0.99
    # validate and checkpoint every this many epochs (and at the last); None: about CHECKPOINTS per run. Each
    # costs seconds (saving, the validation AP) that a small set's epoch of a few seconds should not pay each time.
    checkpoint_every: int | None = None
    # Keras mixed precision of the training model (PRECISIONS); the heads' last layers and the saved model.keras stay
    # float32. None: mixed_float16 with --gpu, float32 on a CPU (mixed_bfloat16 was slower per image on this
    # machine's AVX-512 CPU: docs/TRAINING.md); recorded resolved in RUN/config.json
    precision: str | None = None
    # True: a pretrained backbone's BatchNorm layers stay in inference mode (raydet.detector.model.freeze_backbone_bn);
    # with batches of 16 they train better (docs/TRAINING.md), so they train by default.
    freeze_bn: bool = False
    width: int = 16  # ModelConfig.width
    depth: int = 5
    resource_timeout_s: float = RESOURCE_TIMEOUT_S  # only an autoscaling cluster waits; a fixed one refuses at once
    # GB (10^9 bytes) of PREP rows one worker may hold in memory (its train shard and its part of the test split, as
    # arrays: raydet.train.inputs.plan_inputs); larger shards stream from Ray Data instead. In memory is faster (no data
    # moves after the start), so small sets stay there. 0: always stream.
    memory_budget_gb: float = 2.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise UserError(f"--name must be a non-empty folder name, got {self.name!r}")
        if self.workers is not None:
            _positive("--workers", self.workers)
        if self.cpus_per_worker is not None:
            _positive("--cpus-per-worker", self.cpus_per_worker)
        if self.epochs is not None:
            _positive("--epochs", self.epochs)
        if self.checkpoint_every is not None:
            _positive("--checkpoint-every", self.checkpoint_every)
        _positive("--batch-size", self.batch_size)
        if not 0.0 <= self.ema_decay < 1.0:  # also refuses nan
            raise UserError(f"--ema must be in [0, 1) (0: no average), got {self.ema_decay!r}")
        if self.backbone not in BACKBONE_NAMES:
            raise UserError(f"--backbone must be one of {BACKBONE_NAMES}, got {self.backbone!r}")
        if self.workers is not None and self.batch_size < self.workers:
            raise UserError(f"--batch-size {self.batch_size} is smaller than --workers {self.workers}")
        _positive("--lr", self.lr)
        if not self.clip_norm >= 0:  # also refuses nan
            raise UserError(f"--clip-norm must be >= 0 (0: no clipping), got {self.clip_norm!r}")
        if not 0 <= self.warmup_epochs:  # also refuses nan; a short run clamps it to its epochs (raydet.train.driver)
            raise UserError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.max_failures < 0:
            raise UserError(f"--max-failures must be >= 0, got {self.max_failures!r}")
        if self.close_mosaic < 0:
            raise UserError(f"close_mosaic must be >= 0 (0: mosaic until the end), got {self.close_mosaic!r}")
        _positive("--resource-timeout", self.resource_timeout_s)
        if not self.memory_budget_gb >= 0:  # also refuses nan
            raise UserError(f"--memory-budget-gb must be >= 0 (0: always stream), got {self.memory_budget_gb!r}")
        self._check_precision()

    def _check_precision(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "mixed_float16" and not self.use_gpu:
            raise UserError("--precision mixed_float16 needs --gpu: a CPU emulates float16 math, slowly")
        if self.qat and self.precision not in (None, "float32"):
            raise UserError(f"--precision {self.precision} with --qat: quantization-aware training runs in float32")


@dataclass(frozen=True)
class TuneConfig:
    """``raydet tune``: a Ray Tune search over ``train`` (the base run: PREP, layout, every setting the space does
    not vary; its ``out``/``name`` are RUNS and NAME, and trial k trains as RUN ``RUNS/NAME/trial-k``)."""

    train: TrainConfig
    trials: int = 6  # configurations tried; trial 1 is the space's centre (raydet's defaults), the rest sampled
    # epochs of the longest trial (ASHA's max_t); None: the longest ``epochs`` that ``space`` names, else the
    # epochs a default ``raydet train`` runs on the PREP (its auto schedule), so that trial 1, the space's centre,
    # is that very run (raydet.tune.search.resolve_max_epochs)
    max_epochs: int | None = None
    # ``lr=1e-4..3e-3,batch=8|16,...`` (raydet.tune.space); None: the default space, centred on ``train``
    space: str | None = None
    # ASHA's first rung (epochs a trial trains before it can be stopped); None: max_epochs // 5, at least 1
    grace_epochs: int | None = None
    # ASHA keeps the best 1 / reduction_factor of the trials at each rung (rungs at grace x rf^k epochs)
    reduction_factor: float = 3.0
    seed: int = 0  # which configurations are sampled (the same seed and space give the same trials)

    def __post_init__(self) -> None:
        _positive("--trials", self.trials)
        if self.max_epochs is not None:
            _positive("--max-epochs", self.max_epochs)
        if self.grace_epochs is not None and not 1 <= self.grace_epochs <= (self.max_epochs or self.grace_epochs):
            bound = "" if self.max_epochs is None else f" and at most --max-epochs {self.max_epochs}"
            raise UserError(f"--grace-epochs must be at least 1{bound}, got {self.grace_epochs!r}")
        if not self.reduction_factor > 1:  # also refuses nan
            raise UserError(f"--reduction-factor must be > 1, got {self.reduction_factor!r}")
        if self.train.epochs is not None:
            raise UserError("a tune search sets each trial's epochs itself (--max-epochs, --space epochs=...)")

    @property
    def grace(self) -> int:
        """ASHA's grace period in epochs (``grace_epochs`` resolved)."""
        if self.max_epochs is None:
            raise ValueError("max_epochs is not resolved yet (raydet.tune.search.resolve_max_epochs)")
        return self.grace_epochs or max(1, self.max_epochs // 5)


@dataclass(frozen=True)
class QuantizeConfig:
    run: str
    modes: tuple[str, ...] = QUANT_MODES
    calibration: str | None = None  # PREP folder for int8 calibration; None: the run's own PREP
    calibration_images: int = 200
    address: str | None = None  # Ray cluster for the calibration read; None: RAY_ADDRESS or a fresh local Ray

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in QUANT_MODES]
        if bad or not self.modes:
            raise UserError(f"--mode must be one of {QUANT_MODES + ('all',)}, got {self.modes!r}")
        _positive("--calibration-images", self.calibration_images)


@dataclass(frozen=True)
class EvaluateConfig:
    run: str
    data: str  # PREP folder; its test split is evaluated
    models: tuple[str, ...] = ("float", "int8")
    actors: int = 2
    batch_size: int | None = None  # images per actor call; None: raydet.evaluate.pool.batch_plan picks (~24 MiB)
    coco_out: str | None = None
    draw: int = 16  # test images drawn with boxes (0: none)
    split: str = "test"
    address: str | None = None
    # LiteRT/TF threads per actor; each actor reserves as many CPUs, so actors x threads never oversubscribes
    # the cores (1: scale with --actors, which also spreads over nodes; benchmarks/infer.py compares layouts)
    threads: int = 1
    resource_timeout_s: float = RESOURCE_TIMEOUT_S  # as TrainConfig's: the actors' CPUs, on an autoscaling cluster

    def __post_init__(self) -> None:
        bad = [m for m in self.models if m not in MODEL_NAMES]
        if bad or not self.models:
            raise UserError(f"--models must be a comma list of {MODEL_NAMES}, got {','.join(self.models)!r}")
        _positive("--actors", self.actors)
        _positive("--threads", self.threads)
        _positive("--resource-timeout", self.resource_timeout_s)
        if self.batch_size is not None:
            _positive("--batch-size", self.batch_size)
        if self.draw < 0:
            raise UserError(f"--draw must be >= 0, got {self.draw!r}")
        if self.split not in ("train", "test"):
            raise UserError(f"split must be 'train' or 'test', got {self.split!r}")


@dataclass(frozen=True)
class PredictConfig:
    run: str
    paths: tuple[str, ...]
    out: str
    model: str = "int8"
    score_threshold: float = 0.3  # every detection scoring at least this is listed and drawn
    max_pixels: int = 100_000_000  # images whose header gives more pixels are skipped undecoded (raydet.ingest.images)

    def __post_init__(self) -> None:
        check_max_pixels("--max-pixels", self.max_pixels)
        if not self.paths:
            raise UserError("predict needs at least one image or folder")
        if self.model not in MODEL_NAMES:
            raise UserError(f"--model must be one of {MODEL_NAMES}, got {self.model!r}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise UserError(f"--score-threshold must be in [0, 1], got {self.score_threshold!r}")


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    """``--autoscale MIN..MAX`` -> ``(MIN, MAX)``, None for None; UserError naming a malformed value."""
    if text is None:
        return None
    low, sep, high = text.partition("..")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise UserError(f"malformed --autoscale {text!r}: expected MIN..MAX replicas, e.g. 1..4") from None


@dataclass(frozen=True)
class ServeConfig:
    """``raydet serve``: one model of a RUN behind HTTP, in Ray Serve replicas (raydet.serve)."""

    run: str  # RUN folder or URI; a URI's model file is fetched by each replica (as evaluate's actors do)
    model: str = "int8"
    replicas: int = 1  # fixed replica count, unless autoscale is set
    autoscale: tuple[int, int] | None = None  # (min, max) replicas: Serve adds and removes them with the load
    threads: int = 1  # LiteRT/TF threads per replica; each replica reserves as many CPUs, so none fight for cores
    max_batch_size: int = 16  # requests one model call takes at most (@serve.batch)
    batch_wait_ms: float = 5.0  # how long a batch waits to fill once its first request is in
    port: int = 8000
    host: str = "127.0.0.1"  # 0.0.0.0 to answer other machines (a cluster's head)
    max_bytes: int = 20 * 2**20  # a request body over this is refused (413) before it is decoded
    max_pixels: int = 100_000_000  # as predict's: an image whose header gives more pixels is refused (413)
    score_threshold: float = 0.3  # as predict's; a request's ?score_threshold= overrides it
    # one line per request in Serve's logs; off: a local raydet serve forwards them into its own log file, which
    # would grow without bound on a long-running server, and writing them costs the replicas CPU
    access_log: bool = False
    address: str | None = None
    detach: bool = False  # deploy and return, the application staying on the cluster (needs one: --address)

    def __post_init__(self) -> None:
        if not self.run:
            raise UserError("serve needs a RUN folder")
        if self.model not in MODEL_NAMES:
            raise UserError(f"--model must be one of {MODEL_NAMES}, got {self.model!r}")
        for name, value in (
            ("--replicas", self.replicas),
            ("--threads", self.threads),
            ("--max-batch-size", self.max_batch_size),
            ("--max-bytes", self.max_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise UserError(f"--autoscale must be MIN..MAX with 0 <= MIN <= MAX and MAX >= 1, got {low}..{high}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise UserError(f"--batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise UserError(f"--port must be in 1..65535, got {self.port!r}")
        check_max_pixels("--max-pixels", self.max_pixels)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise UserError(f"--score-threshold must be in [0, 1], got {self.score_threshold!r}")


@dataclass(frozen=True)
class ReportConfig:
    run: str  # RUN folder that `raydet evaluate` has written eval/report.json and the COCO files into
    screenshot: str | None = None  # also save a headless-Chromium PNG of the page here (e.g. for a README)

    def __post_init__(self) -> None:
        if not self.run:
            raise UserError("report needs a RUN folder")
        if self.screenshot is not None and not self.screenshot.endswith(".png"):
            raise UserError(f"--screenshot must name a .png file, got {self.screenshot!r}")


@dataclass(frozen=True)
class RunConfig:
    """``raydet run``. The training settings left None take the recipe of the data: with ``--data`` the real-photo
    defaults of PrepareConfig and TrainConfig; without, the synthetic set's (raydet.pipeline.SYNTH_RECIPE)."""

    data: str | None = None  # None: write the built-in synthetic dataset first
    out: str = "raydet-out"
    images: int = 3000
    image_size: int | None = None
    workers: int | None = None  # None: TrainConfig's fastest layout
    epochs: int | None = None
    use_gpu: bool = False
    address: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    backbone: str | None = None
    pretrained: bool = TrainConfig.pretrained
    freeze_bn: bool = TrainConfig.freeze_bn
    augment: bool = TrainConfig.augment
    augmentation: AugmentConfig | None = None  # None: TrainConfig's
    close_mosaic: int = TrainConfig.close_mosaic
    seed: int = TrainConfig.seed  # initial weights, shuffling and augmentation
    draw: int = 16
    memory_budget_gb: float = TrainConfig.memory_budget_gb
    resource_timeout_s: float = RESOURCE_TIMEOUT_S
    # None: train one run; N: a `raydet tune` search of N trials instead, whose best trial is quantized and evaluated
    tune: int | None = None

    def __post_init__(self) -> None:
        _positive("--images", self.images)
        if self.tune is not None:
            _positive("--tune", self.tune)
        _positive("--resource-timeout", self.resource_timeout_s)
        if not self.memory_budget_gb >= 0:  # also refuses nan
            raise UserError(f"--memory-budget-gb must be >= 0 (0: always stream), got {self.memory_budget_gb!r}")
        for flag, value in (
            ("--image-size", self.image_size),
            ("--workers", self.workers),
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--lr", self.lr),
        ):
            if value is not None:
                _positive(flag, value)
        if self.backbone is not None and self.backbone not in BACKBONE_NAMES:
            raise UserError(f"--backbone must be one of {BACKBONE_NAMES}, got {self.backbone!r}")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise UserError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (raydet.detector.augment): Ultralytics' small-data recipe, so a few hundred photos go
    further. None instead of a config means no augmentation (validation, or ``augment`` False)."""

    hflip: float = 0.5  # probability of a left-right mirror: most scenes have no handedness
    # probabilities of a top-bottom mirror and of 1-3 quarter turns: 0 because photos have an up; overhead or
    # microscope images do not (then e.g. 0.5 each)
    vflip: float = 0.0
    rot90: float = 0.0
    # zoom drawn uniformly in [1 - scale, 1 + scale], one factor for both axes (no aspect change): zoom-out pads
    # with grey, zoom-in crops; Ultralytics' scale=0.5
    scale: float = 0.5
    translate: float = 0.1  # shift of up to this fraction of S in x and in y (Ultralytics' translate)
    # probability an image becomes a 4-image mosaic (Ultralytics' mosaic=1.0): four scenes, more objects per image
    # and objects cut at the borders, the biggest gain on small sets
    mosaic: float = 1.0
    # HSV gains (Ultralytics' hsv_h/s/v): hue shifted by up to 1.5% of the circle, saturation and value scaled
    # by 1 +- 0.7 and 1 +- 0.4 (light and camera vary far more than hue)
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    # a box cut by a zoom, shift or mosaic border is kept when at least this fraction of its area stays: half an
    # object is still recognisably one, a sliver is not
    min_visible: float = 0.5
    # boxes under this many output pixels wide or high are dropped: too small to learn, and a 0-size target
    min_box_px: float = 2.0

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "rot90", "mosaic"):
            _probability(f"augmentation.{name}", getattr(self, name))
        for name in ("scale", "translate", "hsv_h", "hsv_s", "hsv_v"):
            _fraction(f"augmentation.{name}", getattr(self, name))
        _positive("augmentation.min_visible", self.min_visible)
        if not self.min_visible <= 1.0:
            raise UserError(f"augmentation.min_visible must be in (0, 1], got {self.min_visible!r}")
        if not self.min_box_px >= 0:  # also refuses nan
            raise UserError(f"augmentation.min_box_px must be >= 0, got {self.min_box_px!r}")
