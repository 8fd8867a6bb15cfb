"""app.model's public surface: the rest of the app imports from it alone, and it stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import app.model

APP = Path(app.model.__file__).resolve().parents[1]


def test_the_rest_of_the_app_imports_the_model_only_through_app_model() -> None:
    offenders = []
    for path in sorted(APP.rglob("*.py")):
        if APP / "model" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("app.model."):
                offenders.append(f"{path.relative_to(APP.parent)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(APP.parent)}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.startswith("app.model.")
                ]
    assert offenders == []


def test_every_public_name_resolves_and_unknown_names_fail() -> None:
    for name in app.model.__all__:
        assert getattr(app.model, name) is not None, name
    try:
        app.model.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


def test_a_light_name_does_not_import_torch() -> None:
    # The CLI reads its --segmentation choices at parse time; --help must stay instant.
    code = "import sys; from app.model import SEGMENTATIONS; print('torch' in sys.modules, SEGMENTATIONS)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=APP.parent
    )
    assert done.stdout.strip() == "False ('server', 'offline')"
