"""What people look at: drawings, plots, the gallery and the self-contained ``report.html``.

Owns: the analysis of COCO files beyond the headline AP (``analysis``), matplotlib plots (``plots``), drawn boxes
and contact sheets (``draw``), test images drawn for the page (``gallery``), the page itself (``page``) and the
headless browser that looks at it (``browser``). No Ray, no TensorFlow; matplotlib and pyarrow's dataset API are
deferred in ``heavy``.

May import: raydet.errors, raydet.config, raydet.cluster, raydet.detector, raydet.ingest, raydet.export (for
:class:`raydet.export.run.Run`, a RUN's file names) (``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster", "detector", "ingest", "export")
