"""What the user can fix, as exception types.

``UserError`` is raised wherever a bad argument, a bad input file or folder, or a missing user path is found; its
message names the bad value and is the whole story, so ``raydet`` prints it as one line and exits 2
(raydet.cli). Any other exception is a bug and keeps its traceback.

``UserError`` subclasses ``ValueError`` so that ``except ValueError`` around raydet's functions keeps working;
``UserFileNotFoundError`` and ``UserNotADirectoryError`` are also ``FileNotFoundError`` / ``NotADirectoryError``
for the same reason.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix: an argument, a dataset, a PREP or RUN folder. The message names it."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A path the user gave (or a file that must be in a folder the user gave) does not exist."""


class UserNotADirectoryError(UserError, NotADirectoryError):
    """A path the user gave must be a folder and is not."""
