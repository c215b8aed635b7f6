"""Where raydet runs and what it prints: the layer every stage stands on.

Owns: paths and URIs on any filesystem or bucket (``storage``), connecting to or starting Ray (``runtime``), the
resources a stage asks of a fixed or autoscaling cluster (``resources``), whether a local path is shared by every
node (``nodes``), the quiet console and its log file (``console``), one progress line (``progress``) and sizes for
people (``sizes``). Ray is deferred only where ``runtime`` (which every package imports) uses it, through
``heavy``; ``nodes`` and ``resources`` import it at their top.

May import: raydet.errors, raydet.config (``MAY_IMPORT``; tests/test_layers.py checks it).
"""

MAY_IMPORT = ("errors", "config")
