"""Key/value caches owned by the caller: preallocated slots, one per sequence.

Every sequence (a session's LLM history, a speech-decoder segment) lives in one slot of a
preallocated buffer. New keys and values are written in place at the slot's current length, so no
step ever copies a whole cache. A fork (barge-in branches from the current point of an answer)
copies one slot's used prefix once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class CacheFullError(RuntimeError):
    """Raised when no free slot is left, or a sequence would outgrow its slot."""


@dataclass(frozen=True)
class CacheShape:
    """Dimensions of a slot cache: one K and one V buffer per layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_slots: int
    max_len: int

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        """Memory one cached token takes over all layers (K and V)."""
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


class SlotKVCache:
    """Preallocated K/V buffers of shape (num_slots, max_len, kv_heads, head_dim) per layer.

    The cache holds tensors only; which slot belongs to whom is the caller's business.
    Lengths are kept on the host (plain ints) because the scheduler reads them every step.
    """

    def __init__(self, shape: CacheShape, *, dtype: torch.dtype, device: torch.device | str) -> None:
        self.shape = shape
        buffer_shape = (shape.num_layers, shape.num_slots, shape.max_len, shape.num_kv_heads, shape.head_dim)
        self.keys = torch.zeros(buffer_shape, dtype=dtype, device=device)
        self.values = torch.zeros(buffer_shape, dtype=dtype, device=device)
        self.lengths = [0] * shape.num_slots
        self._free = list(range(shape.num_slots - 1, -1, -1))

    @property
    def num_free(self) -> int:
        """Slots not allocated to any sequence."""
        return len(self._free)

    @property
    def max_len(self) -> int:
        return self.shape.max_len

    def allocate(self) -> int:
        """Take a free slot, empty."""
        if not self._free:
            raise CacheFullError(f"all {self.shape.num_slots} cache slots are in use")
        slot = self._free.pop()
        self.lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        """Give a slot back; its contents are simply overwritten by the next owner."""
        if slot in self._free:
            raise ValueError(f"slot {slot} is already free")
        self.lengths[slot] = 0
        self._free.append(slot)

    def fork(self, slot: int) -> int:
        """A new slot holding a copy of `slot`'s used prefix (one copy, at branch time)."""
        new_slot = self.allocate()
        self.copy_slot(slot, new_slot)
        return new_slot

    def copy_slot(self, source: int, target: int) -> None:
        """Make `target` (a slot the caller owns) a copy of `source`'s used prefix."""
        length = self.lengths[source]
        self.keys[:, target, :length] = self.keys[:, source, :length]
        self.values[:, target, :length] = self.values[:, source, :length]
        self.lengths[target] = length

    def truncate(self, slot: int, length: int) -> None:
        """Forget everything after `length` tokens."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"cannot truncate slot {slot} of length {self.lengths[slot]} to {length}")
        self.lengths[slot] = length

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one layer's K and V buffers, (num_slots, max_len, kv_heads, head_dim)."""
        return self.keys[index], self.values[index]

    def check_room(self, slot: int, new_tokens: int) -> None:
        """Fail before a write that would run past the slot's end."""
        if self.lengths[slot] + new_tokens > self.shape.max_len:
            raise CacheFullError(
                f"slot {slot} holds {self.lengths[slot]} tokens; {new_tokens} more exceed its "
                f"capacity of {self.shape.max_len}"
            )

    def advance(self, slots: list[int], counts: list[int]) -> None:
        """Record that `counts[i]` tokens were written to `slots[i]`."""
        for slot, count in zip(slots, counts, strict=True):
            self.lengths[slot] += count
