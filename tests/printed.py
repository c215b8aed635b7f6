"""What a command printed: every path or URI under a root it names must exist once the command has ended, and a
whole run's console is short and holds none of Ray's or TensorFlow's own lines."""

import re

from raydet.cluster import storage


def printed_locations(printed: str, root: str) -> list[str]:
    """Each path or URI starting with ``root`` in ``printed`` (trailing punctuation dropped), in order, once."""
    found = re.findall(re.escape(root) + r"[^\s,()'\"]*", printed)
    return list(dict.fromkeys(p.rstrip(".;:") for p in found))


def assert_printed_locations_exist(printed: str, root: str, at_least: int) -> list[str]:
    """Fail naming each location under ``root`` that ``printed`` names and that does not exist (local or URI), or
    when fewer than ``at_least`` are named; returns them."""
    locations = printed_locations(printed, root)
    assert len(locations) >= at_least, printed[-3000:]
    assert [p for p in locations if not storage.exists(p)] == [], printed[-3000:]
    return locations


# Lines only Ray or TensorFlow write: none may reach the console.
INTERNAL = (
    "PlacementGroupCleaner",
    "logging_progress",
    "streaming_executor",
    "oneDNN",
    "cuInit",
    "cuda",
    "cpu_feature_guard",
    "absl",
    "XNNPACK",
    "Warning",
    "WARNING",
    "Traceback",
    "core_worker",
    "RayTrainWorker",
    "pid=",
)


def assert_no_internal_lines(printed: str) -> None:
    """Fail naming each line of ``printed`` that only Ray or TensorFlow writes (``INTERNAL``)."""
    noise = [line for line in printed.splitlines() if any(word in line for word in INTERNAL)]
    assert not noise, noise


def assert_short_clean_console(printed: str, epochs: int) -> None:
    """``printed``, the whole console of a small `raydet run` (stdout and stderr together, RAYDET_VERBOSE unset),
    holds no line only Ray or TensorFlow writes (``INTERNAL``), one line per epoch, prepare's progress line and
    the path of report.html, in at most 45 lines (the default 15 epochs would add 13 more)."""
    assert_no_internal_lines(printed)
    lines = printed.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == epochs, printed
    assert any(re.match(r"prepare: decode \+ resize: \d+/\d+ images in", line) for line in lines), printed
    assert any(line.startswith("report:   ") and line.split()[1].endswith("/report.html") for line in lines), printed
    assert len(lines) <= 45, printed
