"""``raydet serve``: one model of a RUN behind HTTP, in Ray Serve replicas that batch concurrent requests.

Owns: the HTTP contract (``POST /detect``, ``GET /health``, ``GET /model``), request parsing and its 4xx answers
(:mod:`raydet.serve.http`, no Ray), the Serve deployment and the application builder that ``serve deploy`` and
``serve run`` import (:mod:`raydet.serve.app`: ``raydet.serve.app:build``), and the command that starts it on a
local Ray or a cluster and keeps it until Ctrl-C (:mod:`raydet.serve.driver`).

May import: raydet.errors, raydet.config, raydet.cluster, raydet.ingest, raydet.report, raydet.export, raydet.evaluate
(``MAY_IMPORT``; tests/test_layers.py checks it).
Ray Serve is imported by :mod:`raydet.serve.app` and :mod:`raydet.serve.driver`, which only the command loads
(never ``import raydet`` or ``import raydet.serve``). A replica imports TensorFlow or LiteRT only when it loads its
model, through raydet.export.heavy (an int8 replica LiteRT alone).
"""

MAY_IMPORT = ("errors", "config", "cluster", "ingest", "report", "export", "evaluate")
