"""Evaluation with Ray actors: a RUN's models on a PREP split, and prediction on new images.

Owns: ``raydet evaluate``'s actor pool and its figures (``pool``), what it writes (``outputs``: report.json,
report.md, COCO files, drawings, the eval folder switched in whole) and ``raydet predict`` (``predict``). It defers no
import itself: loading a model imports TensorFlow or LiteRT through raydet.export.heavy.

May import: raydet.errors, raydet.config, raydet.cluster, raydet.detector, raydet.ingest, raydet.report, raydet.export
(``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster", "detector", "ingest", "report", "export")
