"""The one owner of a replica's cache slots: the LLM's (two per session) and the speech decoder's.

Every allocation, fork, truncation and release goes through here, so a slot is never leaked or shared
by mistake; the runner only reads and writes the tensors of the slots it is handed.
"""

from __future__ import annotations

import logging

from app.engine.settings import EngineSettings
from app.model import FreezeOmni, SlotKVCache

log = logging.getLogger(__name__)


class SlotOwner:
    """Preallocated LLM and speech-decoder caches, and who holds which slot."""

    def __init__(self, model: FreezeOmni, settings: EngineSettings, name: str) -> None:
        llm_slots = 2 * settings.max_sessions  # a session's main slot and its spare (a listen branch)
        self.llm_cache: SlotKVCache = model.llm.new_cache(num_slots=llm_slots, max_len=settings.llm_max_len)
        ratio = model.llm.config.hidden_size // model.decoder.config.hidden_size
        # prefix and text rows of a maximal segment (text re-tokenises to about as many tokens,
        # plus the appended full stop), the BOS/SOS pair, and the speech tokens.
        decoder_len = ratio * (2 * settings.max_segment_tokens + 8) + 2 + settings.max_speech_tokens
        self.decoder_cache: SlotKVCache = model.decoder.new_cache(
            num_slots=settings.max_sessions, max_len=decoder_len
        )
        log.info(
            "%s: %d sessions, LLM cache %d slots x %d tokens (%.1f MiB), decoder cache %d x %d",
            name,
            settings.max_sessions,
            llm_slots,
            settings.llm_max_len,
            self.llm_cache.keys.nbytes * 2 / 2**20,
            settings.max_sessions,
            decoder_len,
        )

    # -- LLM slots ---------------------------------------------------------------------------------------
    def open_session(self) -> tuple[int, int]:
        """A new session's (main, spare) LLM slots."""
        return self.llm_cache.allocate(), self.llm_cache.allocate()

    def close_session(self, main: int, spare: int) -> None:
        self.llm_cache.free(main)
        self.llm_cache.free(spare)

    def length(self, slot: int) -> int:
        """Rows an LLM slot holds."""
        return int(self.llm_cache.lengths[slot])

    def fork(self, main: int, spare: int) -> None:
        """Copy main into spare: a listen branch while the bot speaks (the one copy per barge-in)."""
        self.llm_cache.copy_slot(main, spare)

    def truncate(self, slot: int, length: int) -> None:
        """Keep the first `length` rows of an LLM slot."""
        self.llm_cache.truncate(slot, length)

    # -- speech-decoder slots ------------------------------------------------------------------------------
    def allocate_decoder(self) -> int:
        """A speech-decoder slot for one segment."""
        return self.decoder_cache.allocate()

    def free_decoder(self, slot: int) -> None:
        self.decoder_cache.free(slot)
