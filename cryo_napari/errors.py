"""The one error type users see: a file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input. ``str(err)`` is one line: ``<file>: <problem>``.

    The CLI prints it without a traceback and exits with status 2; napari shows it as a
    notification.
    """

    def __init__(self, path, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = " ".join(str(problem).split())  # always one line, whatever a library said
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)
