"""The README documents every setting, and .ci/run runs the README's test command."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"FREEZE_OMNI_{name.upper()}"
        for name in Settings.model_fields
        if f"`FREEZE_OMNI_{name.upper()}`" not in readme
    ]
    assert not missing, f"settings missing from README.md: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_command = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line]
    assert len(ci_command) == 1
    assert ci_command[0].strip() in readme
