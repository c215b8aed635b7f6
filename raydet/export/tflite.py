"""Run any raydet ``.tflite`` file (float32, dynamic, float16, int8, qat) the same way, through LiteRT.

Every file written by ``raydet quantize`` or QAT export has one signature, ``serving_default``, with the
input ``image`` and the outputs ``heatmap`` (N, G, G, C) sigmoid centre scores and ``boxes`` (N, G, G, 4)
``[off_x, off_y, w, h]`` per cell, the names of the Keras model (the model contract in raydet.detector.model and
docs/FORMATS.md; :func:`raydet.detector.decode.decode` turns them into boxes). The int8 and qat files take uint8
pixels; the others take float32 pixels 0..255. :class:`TFLiteModel` hides those differences: it takes uint8
(or float) images 0..255 and returns float32 outputs, quantizing the input and dequantizing outputs where the
file asks for it.

``tf.lite.Interpreter`` is deprecated; ``ai_edge_litert`` runs the same files with the XNNPACK delegate
(docs/STACK.md).
"""

from __future__ import annotations

import os

import numpy as np

from raydet.detector.model import OUTPUT_NAMES
from raydet.errors import UserFileNotFoundError
from raydet.export import heavy

SIGNATURE = "serving_default"


def _quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """float/uint8 pixels -> the integer input of a quantized model: round(x / scale + zero_point), clipped."""
    info = np.iinfo(dtype)
    if scale == 0.0:  # no quantization parameters: the file takes the integers as they are
        return np.clip(x, info.min, info.max).astype(dtype)
    q = np.round(x.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0.0:
        return q.astype(np.float32)
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def signature(path: str) -> dict[str, list[str]]:
    """``{"inputs": [...], "outputs": [...]}``: the names of a ``.tflite`` file's ``serving_default`` signature
    (empty lists when it has none), read without allocating the interpreter's tensors."""
    Interpreter = heavy.litert_interpreter()
    names = Interpreter(model_path=str(path)).get_signature_list().get(SIGNATURE, {})
    return {"inputs": list(names.get("inputs", [])), "outputs": list(names.get("outputs", []))}


class TFLiteModel:
    """One loaded ``.tflite`` detector. Not thread-safe: one per actor/thread.

    Args:
        path: the ``.tflite`` file.
        num_threads: CPU threads LiteRT (XNNPACK) may use.
        batch_size: images per interpreter call. LiteRT re-plans its tensors whenever the batch shape
            changes, so :meth:`predict` feeds fixed-size chunks (the last one may be smaller).
    """

    def __init__(self, path: str, num_threads: int = 1, batch_size: int = 1):
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if not os.path.isfile(path):
            raise UserFileNotFoundError(f"no TFLite model at {path}")
        Interpreter = heavy.litert_interpreter()
        self.path = path
        self.batch_size = batch_size
        self.size_bytes = os.path.getsize(path)
        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise ValueError(
                f"{path}: no {SIGNATURE!r} signature (found {sorted(signatures)}); was it written by raydet quantize?"
            )
        names = signatures[SIGNATURE]
        missing = [n for n in OUTPUT_NAMES if n not in names["outputs"]]
        if len(names["inputs"]) != 1 or missing:
            raise ValueError(
                f"{path}: expected one input and outputs {list(OUTPUT_NAMES)}, "
                f"found inputs {names['inputs']} and outputs {names['outputs']}"
            )
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        self._input_name = names["inputs"][0]
        self._input = self._runner.get_input_details()[self._input_name]
        self._outputs = self._runner.get_output_details()

    @property
    def input_dtype(self) -> np.dtype:
        """What the file takes: ``np.uint8`` (int8/qat files) or ``np.float32``."""
        return np.dtype(self._input["dtype"])

    @property
    def image_size(self) -> int:
        """S of the (N, S, S, 3) input."""
        return int(self._input["shape_signature"][1])

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the outputs, batch dimension first (-1 where the file leaves it open)."""
        return {name: tuple(int(d) for d in self._outputs[name]["shape_signature"]) for name in OUTPUT_NAMES}

    @property
    def num_classes(self) -> int:
        """C of the (N, G, G, C) heatmap."""
        return int(self._outputs["heatmap"]["shape_signature"][-1])

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        dtype = self.input_dtype
        if np.issubdtype(dtype, np.integer):
            scale, zero_point = self._input["quantization"]
            if dtype == np.uint8 and images.dtype == np.uint8 and abs(scale - 1.0) < 1e-3 and zero_point == 0:
                return images  # the usual int8 case: the file's input scale is 1 pixel, nothing to do
            return _quantize(images, dtype, scale, zero_point)
        return images.astype(dtype, copy=False)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, S, S, 3) uint8 or float pixels 0..255 -> ``{"heatmap": (N, G, G, C) float32 scores,
        "boxes": (N, G, G, 4) float32 [off_x, off_y, w, h]}``, dequantized where the file's outputs are integers."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be (N, {self.image_size}, {self.image_size}, 3), got {images.shape}")
        parts = {name: [] for name in OUTPUT_NAMES}
        for start in range(0, len(images), self.batch_size):
            out = self._runner(**{self._input_name: self._prepare(images[start : start + self.batch_size])})
            for name in OUTPUT_NAMES:
                scale, zero_point = self._outputs[name]["quantization"]
                value = out[name]
                parts[name].append(value if value.dtype == np.float32 else _dequantize(value, scale, zero_point))
        if not len(images):
            return {name: np.zeros((0,) + shape[1:], np.float32) for name, shape in self.output_shapes.items()}
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
