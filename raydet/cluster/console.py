"""A quiet console: raydet's own lines on stdout, Ray's and TensorFlow's messages in a log file.

raydet prints everything meant for a person (stage headers, one line per epoch, progress, tables, paths) to
**stdout**. What else reached the console of a `raydet run` came on **stderr**:

- TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, cuInit, CPU features) in every process that imports it.
  TF 2.21 writes them through absl before absl's logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not
  reach them; only the file descriptor does.
- Ray's driver logs (Ray Data's execution plans and its non-interactive progress log, token and actor-restart
  warnings) and every worker's stderr, which Ray forwards to the driver's stderr (Ray Train's
  PlacementGroupCleaner polls the State API, which lives in the dashboard raydet's local Ray does not start,
  and logs a warning every second; deprecation warnings; TFLite's delegate lines).
- Python warnings.

So :func:`quiet_stderr` points file descriptor 2 of the driver (and so of the local Ray it starts) at a log
file for the duration of a command: one rule for every source, no message patterns to keep up to date.
Exceptions still reach the console (the traceback is printed after the block) and the log's path is printed
when it holds anything. Ray must be stopped inside the block (raydet.cli does): its forwarding thread prints
late worker lines until then. Workers' stdout lines (rank 0's epoch lines) lose Ray's ``(RayTrainWorker
pid=...)`` prefix (:func:`plain_worker_lines`), and Ray Data draws no progress bars (raydet.cluster.runtime).
``RAYDET_VERBOSE=1`` leaves all of it as Ray and TensorFlow have it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

VERBOSE_ENV = "RAYDET_VERBOSE"


def verbose() -> bool:
    """Whether the full Ray and TensorFlow logs go to the console: ``RAYDET_VERBOSE=1`` (or true/yes)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def log_path(command: str) -> Path:
    """Where :func:`quiet_stderr` puts one command's stderr: ``<tmp>/raydet-logs/<command>-<time>-<pid>.log``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "raydet-logs" / f"{command}-{stamp}-{os.getpid()}.log"


@contextlib.contextmanager
def quiet_stderr(path: str | os.PathLike):
    """Within the block, file descriptor 2 (stderr, of this process and of every process it starts) writes to
    ``path`` (appended; folders made). Yields the path, or None when :func:`verbose` (nothing redirected).

    On the way out stderr is restored, and ``path`` is named on the console when it is not empty: always after
    an exception (which then propagates), else as a last line."""
    if verbose():
        yield None
        return
    plain_worker_lines()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if path.is_file() and path.stat().st_size:
            where = sys.stderr if failed else sys.stdout
            print(f"Ray and TensorFlow messages: {path} ({VERBOSE_ENV}=1 shows them here)", file=where, flush=True)


def plain_worker_lines() -> None:
    """Workers' lines (rank 0's epoch lines) printed as they are, without Ray's coloured ``(RayTrainWorker
    pid=...)`` prefix; takes effect only before ``ray`` is imported, and a value the user set wins."""
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")


@contextlib.contextmanager
def stdout_to(path: str | os.PathLike | None):
    """Within the block, Python's ``sys.stdout`` appends to ``path`` (a chatty step's own lines, e.g. the
    converter's in ``raydet run``); ``None`` leaves stdout alone."""
    if path is None:
        yield
        return
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield
