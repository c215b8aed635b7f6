"""A trained RUN's model files: converting them and running any of them the same way.

Owns: the RUN folder's layout (``run``: every file name of a RUN and the one reader of its config.json), the
runner that loads any model file (``runner``: ``.keras`` or ``.tflite``, local or in a bucket), LiteRT
(``tflite``), post-training quantization to dynamic, float16 and int8 (``quantize``) and quantization-aware
training's model and export (``qat``: tfmot, with its one private API). TensorFlow, tf_keras, tfmot and LiteRT are
deferred in ``heavy`` (a ``.tflite`` file loads LiteRT alone).

May import: raydet.errors, raydet.config, raydet.cluster, raydet.detector, raydet.ingest
(``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster", "detector", "ingest")
