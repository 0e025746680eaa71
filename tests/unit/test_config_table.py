"""Each setting is declared once (gateway/config/settings.py); the README and the example file follow it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway.config import load_settings
from gateway.config.settings import markdown_table, rows

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE = ROOT / "config" / "gateway.example.toml"
_ASSIGNMENT = re.compile(r"^#?\s*([a-z_]+)\s*=")


def test_the_readme_configuration_table_is_the_settings_table() -> None:
    table = markdown_table()
    assert table in README, "README's configuration table differs from the settings: paste markdown_table()"


def test_the_example_file_names_every_setting_and_no_other() -> None:
    names, section = set(), ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header[1] + "."
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment and not line.startswith("#  "):
            names.add(section + assignment[1])
    declared = {name for row in rows() for name in (row.toml, *row.aliases)}
    declared -= {"api_clients"}  # the example spells it [api] clients
    assert names == declared


def test_the_example_file_loads(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("REPLACE-WITH-OUTPUT-OF-storage-gateway-keygen", "00" * 32)
    text = text.replace("file:///var/lib/recordings", tmp_path.as_uri())
    config = tmp_path / "gateway.toml"
    config.write_text(text, encoding="utf-8")
    tomllib.loads(text)
    settings = load_settings(config, {})
    assert settings.public_url == "https://storage.example.com"


def test_every_row_has_an_environment_variable_and_a_meaning() -> None:
    seen = set()
    for row in rows():
        assert row.env.startswith("GATEWAY_") and row.env not in seen, row
        assert row.doc and not row.doc.endswith("."), row
        seen.add(row.env)
