"""Turn-detection fields that change how the VAD works: `threshold` and semantic_vad's `eagerness`."""

from __future__ import annotations

from app.sessions.session_config import SEMANTIC_EAGERNESS_SILENCE_MS, TurnDetection


def test_threshold_sets_the_vad_mode_unless_aggressiveness_is_given() -> None:
    assert TurnDetection().vad_aggressiveness(default=1) == 1  # nothing said: the server's default
    assert TurnDetection.model_validate({"threshold": 0.9}).vad_aggressiveness(default=1) == 3
    assert TurnDetection.model_validate({"threshold": 0.1}).vad_aggressiveness(default=2) == 0
    both = TurnDetection.model_validate({"threshold": 0.9, "aggressiveness": 1})
    assert both.vad_aggressiveness(default=2) == 1


def test_semantic_eagerness_sets_the_silence_fallback() -> None:
    for eagerness, silence in SEMANTIC_EAGERNESS_SILENCE_MS.items():
        detection = TurnDetection.model_validate({"type": "semantic_vad", "eagerness": eagerness})
        assert detection.fallback_silence_ms() == silence
    low, high = SEMANTIC_EAGERNESS_SILENCE_MS["low"], SEMANTIC_EAGERNESS_SILENCE_MS["high"]
    assert low > high
    explicit = TurnDetection.model_validate(
        {"type": "semantic_vad", "eagerness": "low", "silence_duration_ms": 300}
    )
    assert explicit.fallback_silence_ms() == 300
    assert TurnDetection.model_validate({"silence_duration_ms": 700}).fallback_silence_ms() == 700
