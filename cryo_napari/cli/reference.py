"""The CLI reference (``docs/cli.md``), generated from the argparse parsers.

Regenerate with ``python -m cryo_napari.cli.reference > docs/cli.md``; ``tests/test_docs.py``
fails when the committed file differs from what the parsers say.
"""

from __future__ import annotations

import argparse
import os

from cryo_napari.cli.main import COMMANDS, build_parser


def _help_text(parser: argparse.ArgumentParser) -> str:
    os.environ["COLUMNS"] = "100"  # stable wrapping whatever the terminal
    return parser.format_help().rstrip()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers here only
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference_markdown() -> str:
    """Markdown: the top-level help, then each subcommand's (and nested steps') full help."""
    top = build_parser()
    parts = ["# `cryo-napari` command reference", "",
             "Generated from the parsers by `python -m cryo_napari.cli.reference`; do not edit by hand.", "",
             "```text", _help_text(top), "```", ""]
    for name, sub in _subparsers(top).items():
        if name not in COMMANDS:
            continue
        parts += [f"## `cryo-napari {name}`", "", "```text", _help_text(sub), "```", ""]
        for step, subsub in _subparsers(sub).items():
            parts += [f"### `cryo-napari {name} {step}`", "", "```text", _help_text(subsub), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(cli_reference_markdown(), end="")
