"""Class names as raydet compares them: one spelling per name, whatever the annotation tool or keyboard did.

``clean_class_name``: NFC (macOS and some tools write ``carré`` decomposed), zero-width and other invisible
format characters (U+200B..U+200D, U+2060, U+FEFF: Unicode category Cf) and control characters (Cc) removed
(tabs and line breaks become spaces), surrounding whitespace stripped. Case is kept: ``Cat`` and ``cat`` stay two
classes (``case_collisions`` lists such pairs so the user sees them). Pure standard library, no heavy imports:
``raydet.config`` uses it on ``--classes`` and ``raydet.voc`` on every ``<name>``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

_SPACES = {"\t": " ", "\n": " ", "\r": " ", "\v": " ", "\f": " "}


def clean_class_name(text: str) -> str:
    """``text`` NFC-normalized, invisible (Cf) and control (Cc) characters removed, stripped ('' when nothing is
    left)."""
    text = unicodedata.normalize("NFC", text)
    kept = (_SPACES.get(c, c) for c in text)
    return "".join(c for c in kept if unicodedata.category(c) not in ("Cc", "Cf")).strip()


def case_collisions(names: Iterable[str]) -> list[list[str]]:
    """Groups (sorted, two or more each) of ``names`` that differ only by case: ``[["Cat", "cat"]]``."""
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), set()).add(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)
