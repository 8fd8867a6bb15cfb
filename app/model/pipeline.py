"""The offline pipeline: one spoken question in, the spoken answer and its text out.

It follows the published offline script: system prompt, every 160 ms chunk of the file fed as
listen steps (the state head is recorded but, as there, does not stop the listening), then the
answer, cut into segments that the speech decoder and codec turn into 24 kHz audio. Unlike the
published script it copies no cache per step: caches are slots written in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from app.model.checkpoint_io.layout import FreezeOmni
from app.model.llm.duplex import decide_state
from app.model.llm.qwen2 import LLMRow
from app.model.llm.sampling import sample_llm_token, sample_top_k
from app.model.llm.sampling_settings import LLMSampling
from app.model.speech_in.frontend import StreamingFbank
from app.model.speech_out.codec_stream import CodecChunker, decode_windows
from app.model.speech_out.speech_decoder import SegmentInput
from app.model.speech_out.text_segments import SERVER_SEGMENTATION, Segment, Segmenter
from app.model.turn_parts import (
    IncrementalDetokenizer,
    answer_start_embeds,
    segment_condition,
    system_prefill_embeds,
    turn_opening_embeds,
)


@dataclass(frozen=True)
class InferOptions:
    """Knobs of one offline turn."""

    sampling: LLMSampling = LLMSampling()
    decoder_top_k: int | None = None  # None: server.json's decoder_top_k
    decoder_greedy: bool = False
    seed: int = 0
    max_new_tokens: int = 128  # the published offline script's cap
    max_speech_tokens: int = 1000  # per segment, as published
    max_segment_tokens: int = 80  # cut a segment that finds no punctuation (the engine's default)
    segmentation: str = SERVER_SEGMENTATION  # or "offline": the released offline script's rule
    system_role: str | None = None
    llm_max_len: int = 4096

    @classmethod
    def greedy(cls, **kwargs) -> InferOptions:
        return cls(sampling=LLMSampling(greedy=True), decoder_greedy=True, **kwargs)


@dataclass
class TurnResult:
    """What one turn produced, with enough detail to compare runs token for token."""

    text: str
    token_ids: list[int]
    state_probs: list[tuple[float, float, float]]
    states: list[str]
    codec_ids: list[list[int]]  # per text segment
    audio: np.ndarray  # float32, 24 kHz
    segments: list[Segment] = field(default_factory=list)  # the text segments, in order
    timings: dict[str, float] = field(default_factory=dict)


def pad_to_chunks(samples: np.ndarray, chunk: int) -> np.ndarray:
    """Zero-pad to a whole number of chunks, as the published script does."""
    remainder = len(samples) % chunk
    if remainder:
        samples = np.concatenate([samples, np.zeros(chunk - remainder, dtype=samples.dtype)])
    return samples


class OfflinePipeline:
    """Runs turns on a loaded model, one at a time."""

    def __init__(self, model: FreezeOmni) -> None:
        self.model = model

    @torch.inference_mode()
    def run(self, samples_16k: np.ndarray, options: InferOptions = InferOptions()) -> TurnResult:
        model = self.model
        if len(samples_16k) == 0:
            raise ValueError("the question holds no audio")
        started = time.perf_counter()
        llm_rng = torch.Generator().manual_seed(options.seed)
        decoder_rng = torch.Generator().manual_seed(options.seed + 1)
        cache = model.llm.new_cache(num_slots=1, max_len=options.llm_max_len)
        slot = cache.allocate()
        model.llm.forward_rows([LLMRow(slot, system_prefill_embeds(model, options.system_role))], cache)

        probs, states = self._listen(np.asarray(samples_16k, dtype=np.float32), slot, cache)
        listened = time.perf_counter()

        token_ids, segments = self._answer(slot, cache, options, llm_rng)
        answered = time.perf_counter()
        codec_ids, audio = self._speak(segments, options, decoder_rng)
        spoken = time.perf_counter()
        text = model.tokenizer.decode(token_ids, skip_special_tokens=True)
        return TurnResult(
            text=text,
            token_ids=token_ids,
            state_probs=probs,
            states=states,
            codec_ids=codec_ids,
            audio=audio,
            segments=segments,
            timings={
                "listen_s": listened - started,
                "llm_answer_s": answered - listened,
                "speech_s": spoken - answered,
                "total_s": spoken - started,
            },
        )

    def _listen(self, samples: np.ndarray, slot: int, cache) -> tuple[list, list]:
        """Feed every chunk as a listen step; return the state head's probabilities per chunk."""
        model = self.model
        fbank = StreamingFbank()
        chunk = fbank.chunk_samples
        encoder_state = model.audio.encoder.new_state()
        adapter_cache = None
        opening = turn_opening_embeds(model)
        probs, states = [], []
        padded = pad_to_chunks(samples, chunk)
        for index in range(len(padded) // chunk):
            feats = torch.from_numpy(fbank.accept_chunk(padded[index * chunk : (index + 1) * chunk]))
            vectors, [adapter_cache] = model.audio.encode_chunks(
                feats[None].to(model.device), [encoder_state], [adapter_cache]
            )
            embeds = vectors[0] if index else torch.cat([opening, vectors[0].to(opening.dtype)])
            out = model.llm.forward_rows([LLMRow(slot, embeds)], cache)
            decision = decide_state(model.audio.state_logits(out.hidden[0]))
            probs.append(decision.probs)
            states.append(decision.state.value)
        return probs, states

    def _answer(self, slot: int, cache, options: InferOptions, rng: torch.Generator) -> tuple[list, list]:
        """Generate the answer text; return its token ids and its segments."""
        model = self.model
        detok = IncrementalDetokenizer(model.tokenizer)
        segmenter = Segmenter.for_rule(options.segmentation, options.max_segment_tokens)
        segments: list[Segment] = []
        token_ids: list[int] = []
        out = model.llm.forward_rows([LLMRow(slot, answer_start_embeds(model), want_logits=True)], cache)
        while True:
            token = sample_llm_token(out.logits[0], options.sampling, rng)
            if token == model.eod_id or len(token_ids) >= options.max_new_tokens:
                break
            token_ids.append(token)
            finished = segmenter.push(token, out.hidden[0], detok.push(token))
            if finished:
                segments.append(finished)
            out = model.llm.forward_rows([LLMRow(slot, model.llm.embed([token]), want_logits=True)], cache)
        if last := segmenter.flush():
            segments.append(last)
        return token_ids, segments

    def _speak(self, segments: list[Segment], options: InferOptions, rng: torch.Generator):
        """Speech tokens per segment, streamed through the codec chunker."""
        model = self.model
        decoder = model.decoder
        top_k = options.decoder_top_k or model.server.decoder_top_k
        chunker = CodecChunker(model.server, model.codec.samples_per_token)
        conditions = [segment_condition(model, segment) for segment in segments]
        longest = max((p.shape[0] + t.shape[0] for p, t in conditions), default=0)
        cache = decoder.new_cache(num_slots=1, max_len=longest + 2 + options.max_speech_tokens)
        packets: list[np.ndarray] = []
        codec_ids: list[list[int]] = []

        def drain() -> None:
            windows = chunker.ready_windows()
            for window, audio in zip(windows, decode_windows(model.codec, windows), strict=True):
                packets.extend(chunker.feed(window.index, audio))

        for prefix, text in conditions:
            slot = cache.allocate()
            rows = decoder.prepare_segments([SegmentInput(slot, prefix, text)], cache)
            logits = decoder.forward_ar(rows, cache, [prefix.shape[0]])
            ids: list[int] = []
            while len(ids) < options.max_speech_tokens:
                token = sample_top_k(decoder.mask_non_codes(logits[0]), top_k, rng, options.decoder_greedy)
                if token == decoder.config.eos:
                    break
                ids.append(token)
                chunker.push(token)
                drain()
                logits = decoder.forward_ar(decoder.token_rows([slot], [token]), cache, [prefix.shape[0]])
            cache.free(slot)
            chunker.end_segment()
            drain()
            codec_ids.append(ids)
        audio = np.concatenate(packets) if packets else np.zeros(0, dtype=np.float32)
        return codec_ids, audio
