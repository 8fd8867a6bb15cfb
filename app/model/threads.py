"""How many CPU threads torch's intra-op pool uses: a deliberate setting, not torch's default."""

from __future__ import annotations

import torch


def set_torch_threads(count: int) -> int:
    """Use `count` intra-op threads (0: leave torch's default, one per core); returns the number in use.

    Process-wide: every model replica and the offline pipeline share it. On a CPU host the server's
    event loop (sockets, VAD, audio codecs) needs a core of its own; a pool as wide as the machine
    spins against it and slows every step (measured: see the README's settings table).
    """
    if count < 0:
        raise ValueError(f"torch threads must be 0 (torch's default) or more, got {count}")
    if count > 0:
        torch.set_num_threads(count)
    return torch.get_num_threads()
