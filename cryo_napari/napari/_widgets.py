"""Small Qt building blocks the docks share (a file-path row, a row of guarded buttons)."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton


def path_row(placeholder: str, on_browse, on_open) -> tuple[QHBoxLayout, QLineEdit]:
    """A line edit for a path, a "…" browse button and an "Open" button.

    ``on_open(text)`` gets the edit's text. Returns (layout, line edit).
    """
    row = QHBoxLayout()
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    browse = QPushButton("…")
    browse.clicked.connect(on_browse)
    open_b = QPushButton("Open")
    open_b.clicked.connect(lambda: on_open(edit.text()))
    for w in (edit, browse, open_b):
        row.addWidget(w)
    return row, edit


def button_row(actions, guard) -> QHBoxLayout:
    """One button per (label, callable); each click runs ``guard(callable)`` (errors → notification)."""
    row = QHBoxLayout()
    for label, fn in actions:
        b = QPushButton(label)
        b.clicked.connect(lambda _=False, f=fn: guard(f))
        row.addWidget(b)
    return row
