"""A trained RUN's model files: converting them and running any of them the same way.

Owns: the runner that loads any model file (``runner``: ``.keras`` or ``.tflite``, local or in a bucket, and the
model file names of a RUN), LiteRT (``tflite``), post-training quantization to dynamic, float16 and int8
(``quantize``) and quantization-aware training's model and export (``qat``: tfmot, with its one private API).

May import: raydet.errors, raydet.config, raydet.cluster, raydet.detector, raydet.ingest
(``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster", "detector", "ingest")
