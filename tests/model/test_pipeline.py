"""The offline pipeline on the tiny model: determinism, chunking, audio bookkeeping, sampling, prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.model.checkpoint_io.layout import FreezeOmni
from app.model.llm.duplex import ListenState
from app.model.pipeline import InferOptions, OfflinePipeline, TurnResult
from app.model.speech_out.codec_stream import decode_stream
from app.model.speech_out.text_segments import Segmenter
from app.model.turn_parts import IncrementalDetokenizer

CHUNK = 2560  # 160 ms at 16 kHz
SHORT = 32  # answer cap for the runs that only need to differ or repeat


@pytest.fixture(scope="module")
def pipeline(tiny_model: FreezeOmni) -> OfflinePipeline:
    return OfflinePipeline(tiny_model)


@pytest.fixture(scope="module")
def greedy(pipeline: OfflinePipeline, spoken_16k: np.ndarray) -> TurnResult:
    """One greedy turn with the default options (answer cap 128 tokens)."""
    return pipeline.run(spoken_16k, InferOptions.greedy())


def _same(a: TurnResult, b: TurnResult) -> bool:
    return (
        a.token_ids == b.token_ids
        and a.state_probs == b.state_probs
        and a.states == b.states
        and a.codec_ids == b.codec_ids
        and a.audio.tobytes() == b.audio.tobytes()
    )


def test_greedy_turn_produces_text_and_speech(greedy: TurnResult, tiny_model: FreezeOmni) -> None:
    assert 0 < len(greedy.token_ids) <= 128
    assert tiny_model.eod_id not in greedy.token_ids
    assert greedy.text == tiny_model.tokenizer.decode(greedy.token_ids, skip_special_tokens=True)
    assert greedy.codec_ids and all(greedy.codec_ids)
    codec = tiny_model.decoder.config.codec_vocab
    assert all(0 <= t < codec for ids in greedy.codec_ids for t in ids)
    assert greedy.audio.dtype == np.float32 and np.isfinite(greedy.audio).all()
    assert float(np.abs(greedy.audio).max()) > 0.0
    assert set(greedy.timings) == {"listen_s", "llm_answer_s", "speech_s", "total_s"}


def test_greedy_runs_repeat_exactly(
    greedy: TurnResult, pipeline: OfflinePipeline, spoken_16k: np.ndarray
) -> None:
    again = pipeline.run(spoken_16k, InferOptions.greedy())
    assert _same(greedy, again)


def test_one_state_decision_per_160ms_chunk(greedy: TurnResult, spoken_16k: np.ndarray) -> None:
    assert len(greedy.state_probs) == len(greedy.states) == math.ceil(len(spoken_16k) / CHUNK)
    for probs, state in zip(greedy.state_probs, greedy.states, strict=True):
        assert len(probs) == 3 and sum(probs) == pytest.approx(1.0, abs=1e-5)
        expected = (
            ListenState.IGNORE
            if probs[2] > 0.5
            else ListenState.ANSWER
            if probs[1] > 0.5
            else ListenState.LISTEN
        )
        assert state == expected.value


@pytest.mark.parametrize("samples", [CHUNK, 3 * CHUNK, 3 * CHUNK + 1, 1])
def test_chunk_count_rounds_up(pipeline: OfflinePipeline, spoken_16k: np.ndarray, samples: int) -> None:
    result = pipeline.run(spoken_16k[:samples], InferOptions.greedy(max_new_tokens=0))
    assert len(result.state_probs) == math.ceil(samples / CHUNK)
    assert result.token_ids == [] and result.codec_ids == [] and len(result.audio) == 0


def test_listening_does_not_depend_on_the_answer(
    greedy: TurnResult, pipeline: OfflinePipeline, spoken_16k: np.ndarray
) -> None:
    listen_only = pipeline.run(spoken_16k, InferOptions.greedy(max_new_tokens=0))
    assert listen_only.state_probs == greedy.state_probs


def test_audio_is_600_samples_per_codec_token(greedy: TurnResult, tiny_model: FreezeOmni) -> None:
    assert tiny_model.codec.samples_per_token == 600
    total_tokens = sum(len(ids) for ids in greedy.codec_ids)
    assert len(greedy.audio) == 600 * total_tokens


def test_audio_is_the_streamed_codec_decode_of_the_segments(
    greedy: TurnResult, tiny_model: FreezeOmni
) -> None:
    """Segment by segment, the chunker's windows and seams, nothing lost or repeated."""
    flat = [t for ids in greedy.codec_ids for t in ids]
    ends = list(np.cumsum([len(ids) for ids in greedy.codec_ids]))
    packets = decode_stream(tiny_model.codec, flat, tiny_model.server, segment_ends=ends)
    assert np.concatenate(packets).tobytes() == greedy.audio.tobytes()


def test_one_codec_stream_per_text_segment(greedy: TurnResult, tiny_model: FreezeOmni) -> None:
    detok = IncrementalDetokenizer(tiny_model.tokenizer)
    segmenter = Segmenter(max_tokens=InferOptions().max_segment_tokens)
    segments = [s for t in greedy.token_ids if (s := segmenter.push(t, None, detok.push(t)))]
    if last := segmenter.flush():
        segments.append(last)
    assert len(segments) > 1
    assert len(greedy.codec_ids) == len(segments)


def test_offline_segmentation_cuts_the_same_answer_at_every_sentence_end(
    greedy: TurnResult, pipeline: OfflinePipeline, tiny_model: FreezeOmni, spoken_16k: np.ndarray
) -> None:
    offline = pipeline.run(spoken_16k, InferOptions.greedy(segmentation="offline"))
    assert offline.token_ids == greedy.token_ids  # the LLM does not see the segmentation
    assert [t for s in offline.segments for t in s.token_ids] == offline.token_ids
    assert "".join(s.text for s in offline.segments) == offline.text
    assert len(offline.codec_ids) == len(offline.segments)
    assert len(offline.audio) == 600 * sum(map(len, offline.codec_ids))
    # Exactly the offline script's cuts: a segment ends at the first token whose text makes it end in
    # sentence punctuation (not a digit's full stop), and nowhere else.
    detok = IncrementalDetokenizer(tiny_model.tokenizer)
    pieces = [detok.push(t) for t in offline.token_ids]
    ends, text = [], ""
    for index, piece in enumerate(pieces):
        text += piece
        if text.endswith(tuple("。：？！.?!\n")) and not (
            len(text) > 1 and text[-1] == "." and text[-2].isdigit()
        ):
            ends.append(index + 1)
            text = ""
    expected = list(np.cumsum([len(s.token_ids) for s in offline.segments]))
    assert ends == expected[: len(ends)] and len(expected) - len(ends) in (0, 1)
    assert len(ends) >= 2  # the answer has sentence ends to cut at


def test_sampling_repeats_with_a_seed_and_differs_across_seeds(
    pipeline: OfflinePipeline, spoken_16k: np.ndarray
) -> None:
    first = pipeline.run(spoken_16k, InferOptions(seed=1, max_new_tokens=SHORT))
    again = pipeline.run(spoken_16k, InferOptions(seed=1, max_new_tokens=SHORT))
    other = pipeline.run(spoken_16k, InferOptions(seed=2, max_new_tokens=SHORT))
    assert _same(first, again)
    assert first.token_ids != other.token_ids
    assert first.state_probs == other.state_probs  # listening never samples


def test_speech_decoder_sampling_follows_its_seed(pipeline: OfflinePipeline, spoken_16k: np.ndarray) -> None:
    greedy_text = InferOptions.greedy(max_new_tokens=SHORT)
    sampled = [
        pipeline.run(spoken_16k, InferOptions(sampling=greedy_text.sampling, seed=seed, max_new_tokens=SHORT))
        for seed in (1, 2)
    ]
    reference = pipeline.run(spoken_16k, greedy_text)
    assert sampled[0].token_ids == sampled[1].token_ids == reference.token_ids
    assert sampled[0].codec_ids != sampled[1].codec_ids


def test_a_system_prompt_changes_the_turn(
    pipeline: OfflinePipeline, tiny_model: FreezeOmni, spoken_16k: np.ndarray
) -> None:
    default = pipeline.run(spoken_16k, InferOptions.greedy(max_new_tokens=SHORT))
    explicit = pipeline.run(
        spoken_16k, InferOptions.greedy(max_new_tokens=SHORT, system_role=tiny_model.template.default_role)
    )
    pirate = pipeline.run(
        spoken_16k,
        InferOptions.greedy(max_new_tokens=SHORT, system_role="You are a pirate. Answer in rhyme."),
    )
    assert _same(default, explicit)
    assert pirate.state_probs != default.state_probs
    assert pirate.token_ids != default.token_ids
