"""The README's two commands are what CI runs, letter for letter."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", text, re.S)
    assert match, f"README has no ```sh block after <!-- {marker} -->"
    return match.group(1).strip()


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for marker in ("main-command", "test-command"):
        command = _command(marker)
        assert "\n" not in command, f"the {marker} must be one line"
        assert command in ci_lines, f"{marker} {command!r} is not a line of .ci/run"


def test_main_command_installs_the_cpu_torch_pin() -> None:
    assert "torch==2.13.0" in _command("main-command")


def test_the_readme_config_example_is_the_default_config() -> None:
    import tomllib

    from trustmap.studies.registry import load_settings

    block = re.search(r"```toml\n(.+?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README has no ```toml example"
    assert load_settings(None, overrides=tomllib.loads(block.group(1))) == load_settings()
