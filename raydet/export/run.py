"""A RUN folder (``RUNS/NAME``, a local path or a URI): the name of every file in it, and the one reader of its
``config.json``.

The files (docs/FORMATS.md), each named here and nowhere else:

- ``config.json`` (:attr:`Run.CONFIG`): what ``raydet train`` ran with: ``classes``, ``image_size``, ``model``
  (raydet.config.ModelConfig's fields), ``train`` (TrainConfig's), ``prep``; read by :meth:`Run.read_config`;
- ``model.keras`` (float tf_keras model), ``model_qat.keras`` (the QAT Keras model) and ``model_<mode>.tflite``
  (``float32`` reference, ``dynamic``, ``float16``, ``int8``, ``qat``): :meth:`Run.model_name`;
- ``history.jsonl`` (one row per epoch: :meth:`Run.read_history`), ``curves.png``, ``tensorboard/``,
  ``quantize.log`` (what ``raydet run``'s quantize printed);
- ``stopped.json`` (``{"epoch", "loss"}``: the run's loss became non-finite there; raydet.train.driver writes it
  and refuses to train the run again: :meth:`Run.read_stopped`);
- ``eval/`` (``raydet evaluate``'s output; in a bucket ``eval-<id>/`` named by the pointer ``eval.json``);
- ``checkpoint_*/``: Ray Train's checkpoint folders (their files: raydet.train.worker).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from raydet.cluster import storage
from raydet.config import MODEL_NAMES
from raydet.errors import UserError, UserFileNotFoundError

REFERENCE = "float32"  # the unoptimized .tflite `raydet quantize` writes beside the quantized ones
# every model name a RUN may hold: MODEL_NAMES (what evaluate/predict accept) plus the float32 reference
KNOWN_MODELS = tuple(dict.fromkeys(MODEL_NAMES[:1] + (REFERENCE,) + MODEL_NAMES[1:]))

# config.json's fields that are checked when present: (is it good, what it must be)
CONFIG_FIELDS = {
    "classes": (
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v),
        "a non-empty list of names",
    ),
    "image_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "model": (lambda v: isinstance(v, dict) and "backbone" in v, "an object naming its backbone"),
    "train": (lambda v: isinstance(v, dict), "an object"),
    "prep": (lambda v: isinstance(v, str), "a path or URI"),
}


@dataclass(frozen=True)
class Run:
    """The RUN folder at ``where`` (a path or URI, as given). :meth:`file` locates a file anywhere through
    raydet.cluster.storage; :meth:`local` and :meth:`model` give a ``Path`` in a local folder (such as
    ``storage.local_copy``'s)."""

    where: str | os.PathLike

    CONFIG: ClassVar[str] = "config.json"
    FLOAT_MODEL: ClassVar[str] = "model.keras"
    QAT_MODEL: ClassVar[str] = "model_qat.keras"
    HISTORY: ClassVar[str] = "history.jsonl"
    CURVES: ClassVar[str] = "curves.png"
    TENSORBOARD: ClassVar[str] = "tensorboard"
    QUANT_LOG: ClassVar[str] = "quantize.log"
    STOPPED: ClassVar[str] = "stopped.json"
    EVAL: ClassVar[str] = "eval"
    EVAL_PREFIX: ClassVar[str] = "eval-"  # a bucket's RUN/eval-<id>
    EVAL_POINTER: ClassVar[str] = "eval.json"  # names the bucket's current RUN/eval-<id>

    @staticmethod
    def model_name(name: str) -> str:
        """Model ``name`` (one of ``KNOWN_MODELS``) -> its file name: ``model.keras`` or ``model_<name>.tflite``;
        UserError for another name."""
        if name not in KNOWN_MODELS:
            raise UserError(f"unknown model {name!r}: expected one of {KNOWN_MODELS}")
        return Run.FLOAT_MODEL if name == "float" else f"model_{name}.tflite"

    def file(self, name: str) -> str:
        """RUN/``name`` as a path or URI (raydet.cluster.storage.join: a local path is made absolute)."""
        return storage.join(self.where, name)

    def local(self, name: str) -> Path:
        """RUN/``name`` in a local RUN folder, ``where`` kept as given."""
        return Path(self.where) / name

    def model(self, name: str) -> Path:
        """Where model ``name`` (:meth:`model_name`) of a local RUN folder is."""
        return self.local(self.model_name(name))

    def read_config(self, need: tuple[str, ...] = (), missing_ok: bool = False) -> dict:
        """RUN/config.json -> its dict, checked ({} when there is none and ``missing_ok``).

        UserFileNotFoundError when it is absent; a one-line UserError naming the file and the bad value when it is
        not a JSON object, lacks a field of ``need``, or has a field of ``CONFIG_FIELDS`` of the wrong kind.
        """
        path = self.file(self.CONFIG)
        if storage.kind(path) != "file":
            if missing_ok:
                return {}
            raise UserFileNotFoundError(f"{path} not found: a RUN folder holds the config.json `raydet train` wrote")
        config = storage.read_json_object(path)
        for field in need:
            if field not in config:
                raise UserError(f"{path}: no {field!r} (fields: {', '.join(sorted(config))})")
        for field, (good, what) in CONFIG_FIELDS.items():
            if field in config and not good(config[field]):
                raise UserError(f"{path}: {field!r} must be {what}, got {config[field]!r}")
        return config

    def read_stopped(self) -> dict | None:
        """RUN/stopped.json -> ``{"epoch", "loss"}`` of the non-finite stop that ended the run; None when there is
        none."""
        path = self.file(self.STOPPED)
        return storage.read_json_object(path) if storage.kind(path) == "file" else None

    def read_history(self) -> list[dict]:
        """RUN/history.jsonl's rows, one dict per epoch ([] when there is none)."""
        path = self.file(self.HISTORY)
        if storage.kind(path) != "file":
            return []
        return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
