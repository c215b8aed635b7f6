"""raydet.ingest.classnames: one spelling per class name (NFC, invisible and control characters out, whitespace
stripped, case kept) and the names that differ only by case. ``parse_class_list`` (--classes) is in
tests/test_config.py."""

from __future__ import annotations

import pytest

from raydet.ingest.classnames import case_collisions, clean_class_name


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("carre\u0301", "carr\u00e9"),  # e + combining acute (macOS) -> the one character é
        ("\u200bcat\u200d", "cat"),  # zero-width space and joiner (Cf) removed
        ("\ufeffdog\u2060", "dog"),  # byte order mark and word joiner (Cf)
        ("big\tdog", "big dog"),  # a tab becomes a space
        ("  red\r\n", "red"),  # line breaks become spaces, then stripped
        ("bell\x07", "bell"),  # other control characters (Cc) removed
        ("Cat", "Cat"),  # case kept
        ("\u200b\u200b", ""),  # nothing left
    ],
)
def test_clean_class_name(raw, clean):
    assert clean_class_name(raw) == clean


def test_case_collisions_lists_each_group_sorted():
    assert case_collisions(["Cat", "cat", "dog", "CAT", "Dog", "emu"]) == [["CAT", "Cat", "cat"], ["Dog", "dog"]]
    assert case_collisions(["cat", "cat", "dog"]) == []  # the same name twice is no collision
