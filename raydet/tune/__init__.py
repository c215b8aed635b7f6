"""``raydet tune``: a Ray Tune search over raydet's training.

Owns: the search space (``space``: the ``--space`` mini-language, parsed and checked before any work, the default
space centred on raydet's defaults, the trials' configurations sampled from it), the search (``search``: a Tune
trainable *function* that builds and fits raydet's TensorflowTrainer for one trial, ASHA on val AP50, restore of an
interrupted search) and the table of trials (``table``: ``RUNS/NAME/trials.md`` and ``trials.json``).

May import: raydet.errors, raydet.config, raydet.cluster, raydet.ingest, raydet.export, raydet.train (``MAY_IMPORT``;
tests/test_layers.py checks it), and Ray Tune (``search`` imports it at its top; ``space`` and ``table`` import no
Ray and no TensorFlow); tf_keras, which only a trial's workers need, comes deferred from raydet.train.heavy.
"""

MAY_IMPORT = ("errors", "config", "cluster", "ingest", "export", "train")
