"""raydet.errors: what the user can fix is a UserError (one line, exit 2: tests/test_cli.py) and still the standard
exception a caller catches."""

from __future__ import annotations

import pytest

from raydet.errors import UserError, UserFileNotFoundError, UserNotADirectoryError


@pytest.mark.parametrize(
    "kind, standard",
    [(UserError, ValueError), (UserFileNotFoundError, FileNotFoundError), (UserNotADirectoryError, NotADirectoryError)],
)
def test_a_user_error_is_caught_as_the_standard_exception(kind, standard):
    with pytest.raises(standard, match="^bad --out x$"):
        raise kind("bad --out x")
    assert issubclass(kind, UserError) and issubclass(kind, ValueError)
