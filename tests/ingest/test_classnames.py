"""raydet.ingest.classnames: one spelling per class name (NFC, invisible and control characters out, whitespace
stripped, case kept), the names that differ only by case, and ``parse_class_list`` (--classes: a comma list or a
file of names)."""

from __future__ import annotations

import pytest

from raydet.errors import UserError
from raydet.ingest.classnames import case_collisions, clean_class_name, parse_class_list


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


def test_class_list_parsing():
    assert parse_class_list(" cat, dog ") == ("cat", "dog")
    assert parse_class_list(None) is None


@pytest.mark.parametrize("text,match", [("a,,b", "'a,,b'"), ("", "''"), ("a,b,a", r"\['a'\]")])
def test_malformed_class_list_names_it(text, match):
    with pytest.raises(ValueError, match=match):
        parse_class_list(text)


def test_classes_from_a_file_hold_commas_and_skip_comments(tmp_path):

    path = tmp_path / "classes.txt"
    path.write_text("# my classes\nred, round\n\n  carre\u0301  \n#blue\nsquare\u200b\n", encoding="utf-8")
    assert parse_class_list(str(path)) == ("red, round", "carr\u00e9", "square")
    assert parse_class_list("red, round") == ("red", "round")  # not a file: a comma list
    (tmp_path / "dupes.txt").write_text("cat\ncat\u200b\n")
    with pytest.raises(UserError, match=r"class file .*dupes\.txt.*repeated class names \['cat'\]"):
        parse_class_list(str(tmp_path / "dupes.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="names no class"):
        parse_class_list(str(tmp_path / "empty.txt"))
