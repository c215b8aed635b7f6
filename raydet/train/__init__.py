"""Training with Ray Train's ``TensorflowTrainer`` (tf_keras, MultiWorkerMirroredStrategy).

Owns: the driver that configures and runs the trainer and writes the RUN (``driver``), the backend config that
sets each worker's ``TF_CONFIG`` (``backend``), one worker's loop (``worker``), the input pipeline (``inputs``), the
schedule (``schedule``: epochs, warm-up and cosine, checkpoint cadence), validation AP during training
(``validation``) and the EMA of the weights (``ema``). TensorFlow, tf_keras, Ray Train's ``TensorflowTrainer`` and
its two private modules are deferred in ``heavy``.

May import: raydet.errors, raydet.config, raydet.cluster, raydet.detector, raydet.ingest, raydet.report, raydet.export
(``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster", "detector", "ingest", "report", "export")
