"""The committed trained model and recordings it never heard in training (see training/heldout.py).

Recordings are made here with espeak-ng and numpy noise: held-out speeds and pitches, fresh noise
seeds, a little silence before and after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.model import TinyPaths
from tests.conftest import LiveServer, free_port
from training.common import MODEL_DIR
from training.heldout import TEST_PAIRS, Recording, held_out_question, ignorable_sounds


@pytest.fixture(scope="session")
def trained_paths() -> TinyPaths:
    paths = TinyPaths(MODEL_DIR)
    if not paths.exists():
        pytest.fail(f"no trained model at {MODEL_DIR}: run training/run_all.sh (see training/README.md)")
    return paths


@pytest.fixture(scope="session")
def trained_model(trained_paths: TinyPaths):
    """The committed model on CPU in fp32. Shared: tests must not change its weights."""
    from app.model.checkpoint_io.layout import load_freeze_omni

    return load_freeze_omni(trained_paths.model_path, trained_paths.llm_path)


@pytest.fixture(scope="session")
def held_out_questions() -> list[Recording]:
    return [held_out_question(i, p, seed=90_000 + i) for i, p in enumerate(TEST_PAIRS)]


@pytest.fixture(scope="session")
def ignorables() -> list[Recording]:
    return ignorable_sounds()


@pytest.fixture(scope="session")
def question_turns(trained_model, held_out_questions):
    """Each held-out question through the offline pipeline, greedy: (recording, TurnResult)."""
    from app.model.pipeline import InferOptions, OfflinePipeline

    pipeline = OfflinePipeline(trained_model)
    return [(rec, pipeline.run(rec.samples, InferOptions.greedy())) for rec in held_out_questions]


@pytest.fixture(scope="session")
def trained_server(trained_paths: TinyPaths) -> Iterator[LiveServer]:
    """A live server on the committed trained model, with the serving defaults (sampling, VAD) and seed 0."""
    from app.config import Settings

    settings = Settings(
        model_path=trained_paths.model_path,
        llm_path=trained_paths.llm_path,
        port=free_port(),
        seed=0,
        log_level="warning",
        admission_max_load=0.0,  # concurrent sessions here test turn taking, not this machine's speed
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()
