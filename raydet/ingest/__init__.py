"""Ingestion with Ray Data: a folder or bucket of Pascal VOC photos -> a PREP folder of Parquet shards.

Owns: finding a dataset and reading its files safely (``discovery``), parsing one XML (``voc``), class names as
raydet compares them (``classnames``), decoding and resizing one image (``images``), the shard format (``shards``),
the PREP folder and its manifest (``prep``: the one reader and writer of that layout), ``raydet prepare`` on Ray
Data (``prepare``) and the built-in synthetic dataset (``synth``). OpenCV and simplejpeg (for ``images``) and Ray Data
(for ``shards``) are deferred in ``heavy``.

May import: raydet.errors, raydet.config, raydet.cluster, raydet.detector
(``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster", "detector")
