"""FREEZE_OMNI_STRICT_LOAD through a real server: the same checkpoint with training state in it
serves by default and is reported as a load failure on /readyz under strict loading."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import torch

from app.config import Settings
from app.model.fixtures.tiny import TinyPaths
from tests.conftest import LiveServer, free_port


@pytest.fixture(scope="module")
def polluted_model(tiny_model_dir: TinyPaths, tmp_path_factory: pytest.TempPathFactory) -> TinyPaths:
    """The tiny model with optimizer state and a step counter beside the speech decoder's weights."""
    paths = TinyPaths(tmp_path_factory.mktemp("polluted") / "tiny")
    shutil.copytree(tiny_model_dir.root, paths.root)
    decoder_file = paths.model_path / "decoder" / "final.pt"
    state = torch.load(decoder_file, weights_only=True)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "step": 9}, decoder_file)
    return paths


def _readiness(server: LiveServer, timeout: float = 60.0) -> httpx.Response:
    """/readyz once loading has ended (ready or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(server.base_url + "/readyz", timeout=2)
            if response.json()["status"] != "loading":
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the server neither loaded nor failed in time")


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_strict_load_setting_decides_whether_training_state_fails_the_load(
    polluted_model: TinyPaths, strict: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FREEZE_OMNI_STRICT_LOAD", "true" if strict else "false")
    settings = Settings(
        model_path=polluted_model.model_path,
        llm_path=polluted_model.llm_path,
        port=free_port(),
        max_sessions=1,
        log_level="warning",
    )
    assert settings.strict_load is strict
    server = LiveServer(settings)
    server.thread.start()
    try:
        response = _readiness(server)
        if strict:
            assert response.status_code == 503
            error = response.json()["error"]
            decoder_file = polluted_model.model_path / "decoder" / "final.pt"
            assert f"unexpected entry 'optimizer' (nested, 0 tensors) in {decoder_file}" in error
            assert f"unexpected entry 'step' (int) in {decoder_file}" in error
            assert httpx.get(server.base_url + "/healthz").status_code == 200  # up, to report it
        else:
            assert response.status_code == 200 and response.json()["status"] == "ready"
    finally:
        server.stop()
