"""`Engine.describe_answer`: where a running answer stands, for the server's quiet-response log.

On the tiny random model a segment's audio leaves in one piece when the segment ends (its codec output
is never quiet enough for the published chunker to cut it earlier): while the speech decoder works on a
segment the client gets nothing, and the description must say that the engine still has work for the
answer. That is what explains the soak's long gaps on an overloaded engine (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio

from app.engine.engine import Engine
from app.engine.events import AnswerStatus, AudioDelta
from app.engine.settings import EngineSettings
from app.model import OUTPUT_RATE


def test_a_running_answer_is_described_until_it_is_done(tiny_model) -> None:
    async def main() -> tuple[list[dict], dict, list[float]]:
        engine = Engine(
            tiny_model, EngineSettings(max_sessions=2, max_answer_tokens=24, admission_max_load=0)
        )
        await engine.start()
        try:
            sid = await engine.open_session(seed=3)
            stream = await engine.text_turn(sid, "Tell me a story.")
            seen, packets = [], []
            async for event in stream:
                seen.append(engine.describe_answer(sid))
                if isinstance(event, AudioDelta):
                    packets.append(len(event.samples) / OUTPUT_RATE)
            assert stream.done is not None and stream.done.status == AnswerStatus.COMPLETED
            return seen, engine.describe_answer(sid), packets
        finally:
            await engine.stop()

    seen, after, packets = asyncio.run(main())
    running = [d for d in seen if d.get("answer") is not None]
    assert running, seen
    # The engine runs on its own thread, so a description read when an event arrives may already be
    # a few steps past that event: near the end it can say the work is done. At the answer's first
    # event the speech decoder has all its work ahead of it.
    assert running[0]["has_work"], running
    assert {"phase", "ahead_s", "held_audio_s", "segment_tokens", "codec_tokens"} <= set(running[0])
    # Mid-segment the decoder has made tokens the client has not heard yet: audio leaves per segment.
    assert any(d["has_work"] and d["segment_tokens"] for d in running), running
    assert after == {"answer": None, "listening": False, "listen_pending": 0}
    assert packets and sum(packets) > 0
