"""The README's config reference is generated from the schema: keep them in sync."""
from pathlib import Path

from podium.schema import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    assert config_reference() in text, "regenerate the README's config reference: podium config reference"


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("```")[1]
    assert "make demo" in head and "make test" in head


def _readme_commands() -> set[str]:
    """Command names in the README's command table: `podium cv-gather RUN` -> "cv-gather"."""
    text = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in text.splitlines():
        if not line.startswith("| `podium"):
            continue
        for cell in line.split("|")[1].split(" / "):
            words = cell.strip().strip("`").split()[1:]
            names.add(" ".join(w for w in words[:2] if w[:1].islower() and w[:1].isalpha() and "=" not in w))
    return names


def _cli_commands() -> set[str]:
    import argparse

    from podium.cli import build_parser

    def sub_choices(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    names = set()
    for name, parser in sub_choices(build_parser()).items():
        nested = sub_choices(parser)
        names.update(f"{name} {sub}" for sub in nested) if nested else names.add(name)
    return names


def test_readme_command_table_lists_every_command():
    assert _readme_commands() == _cli_commands()
