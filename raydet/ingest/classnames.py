"""Class names as raydet compares them: one spelling per name, whatever the annotation tool or keyboard did.

``clean_class_name``: NFC (macOS and some tools write ``carré`` decomposed), zero-width and other invisible
format characters (U+200B..U+200D, U+2060, U+FEFF: Unicode category Cf) and control characters (Cc) removed
(tabs and line breaks become spaces), surrounding whitespace stripped. Case is kept: ``Cat`` and ``cat`` stay two
classes (``case_collisions`` lists such pairs so the user sees them). Pure standard library, no heavy imports:
``parse_class_list`` uses it on ``--classes`` and ``raydet.ingest.voc`` on every ``<name>``.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable

from raydet.errors import UserError

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


def parse_class_list(text: str | None) -> tuple[str, ...] | None:
    """``--classes``: ``"cat,dog"`` -> ``("cat", "dog")``; or, when ``text`` names an existing file, its lines
    (one name per line, so a name may hold a comma; blank lines and lines starting with ``#`` ignored). None
    stays None. Names are cleaned as in the annotations (raydet.ingest.classnames). Empty, blank or repeated names
    raise ``UserError``."""
    if text is None:
        return None
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8-sig") as file:
                lines = file.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--classes {text}: cannot read the class file ({exc})") from None
        names = tuple(clean_class_name(n) for n in lines if n.strip() and not n.strip().startswith("#"))
        where = f"class file {text!r}"
        if not names or any(not n for n in names):
            raise UserError(f"{where} names no class (or a name of only invisible characters): one name per line")
    else:
        names = tuple(clean_class_name(part) for part in text.split(","))
        where = f"class list {text!r}"
        if not names or any(not n for n in names):
            raise UserError(
                f"malformed {where}: expected comma-separated non-empty names, e.g. 'cat,dog', "
                "or a file with one name per line"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"malformed {where}: repeated class names {dupes}")
    return names
