"""The detector itself: what a box is, what the network learns and how its output becomes detections.

Owns: numpy box math (``boxes``: box formats are named at every boundary), CenterNet training targets
(``targets``), decoding the dense heads (``decode``), augmentations that move every box with its image (``augment``),
detection metrics and COCO files (``metrics``, ``coco``), the two-headed network and its losses (``model``) and the
pretrained backbones with their weights (``efficientnet_lite``, ``torch_pickle``). Only ``model`` and
``efficientnet_lite`` load TensorFlow and tf_keras, deferred in ``heavy`` (raydet's one import of both: export and
train take them from there); the rest is numpy.

May import: raydet.errors, raydet.config, raydet.cluster (``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config", "cluster")
