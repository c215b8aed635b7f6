"""What a command printed: every path or URI under a root it names must exist once the command has ended."""

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
