"""The README's config reference is generated from the schema: keep them in sync."""
from pathlib import Path

from podium.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    assert config_reference() in text, "regenerate the README's config reference: podium config reference"


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("```")[1]
    assert "make demo" in head and "make test" in head
