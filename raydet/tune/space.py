"""The search space of ``raydet tune``: the ``--space`` text, checked, and the trials' configurations.

``--space`` is a comma list of ``NAME=VALUES``, each NAME at most once; VALUES is ``LOW..HIGH`` (a range) or
``A|B|C`` (choices; one value fixes the parameter):

- ``lr``: learning rate for the global batch (a range is sampled log-uniformly);
- ``batch``: global batch size (integers);
- ``aug``: augmentation strength, a factor on the zoom, shift, HSV gains and mosaic probability of the base
  run's augmentation (1: as given; 0: none; values in [0, 2], each gain capped at 0.95 and mosaic at 1);
- ``backbone``: raydet.config.BACKBONE_NAMES;
- ``epochs``: the trial's schedule length (its cosine decay ends there), at most ``--max-epochs`` (integers).

The image size is not a parameter: a PREP holds its images at one size (prepare another PREP for another size).
Names left out keep the default space (``default_space``). A trial's configuration is a plain dict
``{"lr", "batch", "aug", "backbone", "epochs"}``; trial 1 is the centre of the space, the others are drawn with a
seeded generator, so the same space and seed always give the same trials (what a restored search relies on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from raydet.cluster import storage
from raydet.config import BACKBONE_NAMES, AugmentConfig, TrainConfig
from raydet.errors import UserError

PARAMS = ("lr", "batch", "aug", "backbone", "epochs")
MAX_AUG = 2.0
AUG_CAP = 0.95  # a fraction of AugmentConfig must stay below 1


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (inclusive); ``log``: sampled log-uniformly; ``integer``: whole numbers."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (each equally likely)."""

    values: tuple


def _number(name: str, text: str, integer: bool) -> float | int:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UserError(f"--space {name}: {text!r} is not {kind}") from None
    if not math.isfinite(value):
        raise UserError(f"--space {name}: {text!r} is not a finite number")
    return value


def _check_value(name: str, value, max_epochs: int | None) -> None:
    """UserError naming ``value`` when parameter ``name`` cannot take it (``max_epochs`` None: no upper bound on
    ``epochs``)."""
    if name == "backbone":
        if value not in BACKBONE_NAMES:
            raise UserError(f"--space backbone: {value!r} is not one of {', '.join(BACKBONE_NAMES)}")
    elif name == "aug":
        if not 0 <= value <= MAX_AUG:
            raise UserError(f"--space aug: {value!r} must be in [0, {MAX_AUG:g}]")
    elif name == "epochs" and not 1 <= value <= (max_epochs or value):
        bound = "" if max_epochs is None else f" and at most --max-epochs {max_epochs}"
        raise UserError(f"--space epochs: {value!r} must be at least 1{bound}")
    elif value <= 0:
        raise UserError(f"--space {name}: {value!r} must be positive")


def _dimension(name: str, text: str, max_epochs: int | None) -> Range | Choice:
    """One ``NAME=VALUES`` part's VALUES -> a Range or Choice, every value checked."""
    integer = name in ("batch", "epochs")
    if ".." in text:
        if name == "backbone":
            raise UserError(f"--space backbone={text}: a backbone is a choice (a|b), not a range")
        low_text, _, high_text = text.partition("..")
        low, high = _number(name, low_text, integer), _number(name, high_text, integer)
        if low > high:
            raise UserError(f"--space {name}={text}: the range's low end is above its high end")
        for value in (low, high):
            _check_value(name, value, max_epochs)
        return Range(low, high, log=name == "lr", integer=integer)
    parts = text.split("|")
    if any(not p for p in parts):
        raise UserError(f"--space {name}={text}: an empty value (expected A|B|C or LOW..HIGH)")
    values = tuple(p if name == "backbone" else _number(name, p, integer) for p in parts)
    for value in values:
        _check_value(name, value, max_epochs)
    return Choice(values)


def parse_space(text: str, max_epochs: int | None) -> dict[str, Range | Choice]:
    """``"lr=1e-4..3e-3,batch=8|16"`` -> ``{"lr": Range(...), "batch": Choice((8, 16))}``; "" -> {}.
    UserError naming the bad part: an unknown or repeated name, a part without ``=``, a bad value (an ``epochs``
    above ``max_epochs``, unless that is None)."""
    space: dict[str, Range | Choice] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part and not text.strip():
            continue
        name, eq, values = part.partition("=")
        name = name.strip()
        if not eq or not values.strip():
            raise UserError(f"--space: {part!r} is not NAME=VALUES (e.g. lr=1e-4..3e-3 or batch=8|16)")
        if name not in PARAMS:
            raise UserError(f"--space: unknown parameter {name!r} in {part!r} (known: {', '.join(PARAMS)})")
        if name in space:
            raise UserError(f"--space: {name!r} is given twice")
        space[name] = _dimension(name, values.strip(), max_epochs)
    return space


def longest_epochs(text: str | None) -> int | None:
    """The most epochs ``--space`` text gives a trial (a range's high end, a choice's largest), None when it does
    not name ``epochs``."""
    epochs = parse_space(text or "", None).get("epochs")
    if epochs is None:
        return None
    return int(epochs.high if isinstance(epochs, Range) else max(epochs.values))


def default_space(base: TrainConfig, max_epochs: int) -> dict[str, Range | Choice]:
    """The space around ``base``: lr from a third to three times its own (log), batch half / same / double, aug
    0.5-1.5, its backbone (and EfficientNet-Lite1 beside Lite0), epochs half of ``max_epochs`` or all of it."""
    backbones = (base.backbone, "efficientnet_lite1") if base.backbone == "efficientnet_lite0" else (base.backbone,)
    batches = tuple(sorted({max(1, base.batch_size // 2), base.batch_size, base.batch_size * 2}))
    epochs = tuple(sorted({max(1, max_epochs // 2), max_epochs}))
    return {
        "lr": Range(base.lr / 3, base.lr * 3, log=True),
        "batch": Choice(batches),
        "aug": Range(0.5, 1.5),
        "backbone": Choice(backbones),
        "epochs": Choice(epochs),
    }


def build_space(base: TrainConfig, text: str | None, max_epochs: int) -> dict[str, Range | Choice]:
    """The default space with ``--space``'s parameters in place of its own."""
    return default_space(base, max_epochs) | parse_space(text or "", max_epochs)


def _default_of(base: TrainConfig, max_epochs: int) -> dict:
    return {"lr": base.lr, "batch": base.batch_size, "aug": 1.0, "backbone": base.backbone, "epochs": max_epochs}


def centre(space: dict[str, Range | Choice], base: TrainConfig, max_epochs: int) -> dict:
    """The configuration of trial 1: ``base``'s own value of each parameter where the space holds it, else the
    middle of the range (geometric for lr) or the middle choice."""
    default, point = _default_of(base, max_epochs), {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            point[name] = default[name] if default[name] in dim.values else dim.values[len(dim.values) // 2]
        elif dim.low <= default[name] <= dim.high:
            point[name] = default[name]
        else:
            mid = math.sqrt(dim.low * dim.high) if dim.log else (dim.low + dim.high) / 2
            point[name] = round(mid) if dim.integer else mid
    return point


def _draw(dim: Range | Choice, rng: np.random.Generator):
    if isinstance(dim, Choice):
        return dim.values[int(rng.integers(len(dim.values)))]
    if dim.integer:
        return int(rng.integers(int(dim.low), int(dim.high) + 1))
    if dim.log:  # 3 significant digits: a learning rate is read, not computed with
        return float(f"{math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))):.3g}")
    return round(float(rng.uniform(dim.low, dim.high)), 2)


def sample_trials(
    space: dict[str, Range | Choice], base: TrainConfig, max_epochs: int, trials: int, seed: int
) -> list[dict]:
    """``trials`` configurations: the centre first, then draws from ``space`` (numpy, seeded by ``seed``), each
    parameter drawn in ``PARAMS`` order so that a space's draws do not depend on how ``--space`` was written."""
    rng = np.random.default_rng(seed)
    configs = [centre(space, base, max_epochs)]
    while len(configs) < trials:
        configs.append({name: _draw(space[name], rng) for name in PARAMS if name in space})
    return configs


def scaled_augmentation(aug: AugmentConfig, strength: float) -> AugmentConfig:
    """``aug`` with its zoom, shift, HSV gains and mosaic probability times ``strength`` (flips unchanged), each
    gain capped at ``AUG_CAP`` and mosaic at 1."""

    def cap(value: float) -> float:
        return min(value * strength, AUG_CAP)

    return replace(
        aug,
        scale=cap(aug.scale),
        translate=cap(aug.translate),
        hsv_h=cap(aug.hsv_h),
        hsv_s=cap(aug.hsv_s),
        hsv_v=cap(aug.hsv_v),
        mosaic=min(aug.mosaic * strength, 1.0),
    )


def trial_train_config(base: TrainConfig, point: dict, k: int, report_every: int) -> TrainConfig:
    """The TrainConfig of trial ``k`` (1-based): ``base`` with ``point``'s values, run ``base.out/base.name/trial-k``,
    validated (so reported to Tune) every ``report_every`` epochs."""
    aug = point.get("aug", 1.0)
    return replace(
        base,
        out=storage.join(base.out, base.name),
        name=trial_name(k),
        lr=float(point.get("lr", base.lr)),
        batch_size=int(point.get("batch", base.batch_size)),
        backbone=point.get("backbone", base.backbone),
        epochs=int(point["epochs"]),
        augment=base.augment and aug > 0,
        augmentation=scaled_augmentation(base.augmentation, aug),
        checkpoint_every=report_every,
    )


def trial_name(k: int) -> str:
    """The RUN folder name of trial ``k`` under RUNS/NAME."""
    return f"trial-{k}"
