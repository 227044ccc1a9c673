"""Documentation that is generated must match the code it documents."""

from pathlib import Path

from cryo_napari.cli.reference import cli_reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == cli_reference_markdown(), \
        "docs/cli.md is stale: run `python -m cryo_napari.cli.reference > docs/cli.md`"


def test_cli_reference_covers_every_subcommand():
    from cryo_napari.cli.main import COMMANDS

    text = cli_reference_markdown()
    for name in COMMANDS:
        assert f"## `cryo-napari {name}`" in text, name


def test_readme_links_docs_that_exist():
    import re

    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
