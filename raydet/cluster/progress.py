"""One progress line for long work (prepare's decode pass, evaluate's actor pool). No Ray, no TensorFlow.

On a terminal the line is redrawn in place as a bar; in a file (``raydet run > log``, ``ray job submit``, CI)
it is printed every ``interval_s`` seconds at most and once at the end, so a log stays a few lines long.
"""

from __future__ import annotations

import sys
import time

BAR_WIDTH = 30


class Progress:
    """``label: done/total unit`` on stdout (or ``stream``). Use as a context manager or call :meth:`close`.

    ``update(n)`` adds ``n`` finished items. ``tty`` (default: whether the stream is a terminal) chooses the
    redrawn bar over the occasional line. The last line says how long it took: ``label: 600/600 images in 4.2 s``.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "images",
        stream=None,
        interval_s: float = 30.0,
        tty: bool | None = None,
    ):
        self.label, self.total, self.unit = label, int(total), unit
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.interval_s = interval_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()  # last: when the last line was printed (not on a terminal)
        self.closed = False

    def update(self, n: int = 1) -> None:
        """``n`` more items are done."""
        self.done += int(n)
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + self._bar(now))
            self.stream.flush()
        elif now - self.last >= self.interval_s:
            self._line(f"{self.done}/{self.total} {self.unit}, {now - self.t0:.0f} s so far")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.tty:
            self.stream.write("\r\033[K")  # clear the bar; the summary line replaces it
        self._line(f"{self.done}/{self.total} {self.unit} in {time.perf_counter() - self.t0:.1f} s")

    def _bar(self, now: float) -> str:
        frac = min(1.0, self.done / self.total) if self.total > 0 else 1.0
        filled = round(BAR_WIDTH * frac)
        return (
            f"{self.label}: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} {self.unit} "
            f"{now - self.t0:.0f} s"
        )

    def _line(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream, flush=True)
        self.last = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
