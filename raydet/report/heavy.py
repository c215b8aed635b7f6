"""The report's deferred imports, the one place it imports matplotlib and pyarrow's dataset API: the training driver
and evaluation import the report's modules, and pay for these only when a plot is drawn or a PREP is searched."""

from __future__ import annotations

from types import ModuleType


def figure() -> tuple[type, type]:
    """matplotlib's ``(Figure, FigureCanvasAgg)``, for a figure on the Agg canvas. Deferred: matplotlib takes about
    half a second to import."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def ticker() -> ModuleType:
    """``matplotlib.ticker``, for an axis's tick positions. Deferred as :func:`figure`."""
    import matplotlib.ticker

    return matplotlib.ticker


def arrow_dataset() -> tuple[ModuleType, ModuleType]:
    """``(pyarrow.dataset, pyarrow.compute)``, to read a PREP's rows by file name. Deferred: they take about a third
    of a second to import, and only the gallery's search needs them."""
    import pyarrow.compute
    import pyarrow.dataset

    return pyarrow.dataset, pyarrow.compute
