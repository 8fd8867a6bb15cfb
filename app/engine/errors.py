"""Errors the engine raises to its callers."""


class EngineError(RuntimeError):
    """Base class."""


class CapacityError(EngineError):
    """No replica has room for another session."""


class SessionClosedError(EngineError):
    """The session was closed, or failed, before the request completed."""


class EngineStoppedError(EngineError):
    """The engine is shutting down or not started."""


class TurnTooLongError(EngineError, ValueError):
    """A typed turn cannot fit the conversation's cache even with every earlier turn dropped.

    Nothing of the session changed: it goes on, without that turn.
    """

    def __init__(self, turn_tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"the typed turn is {turn_tokens} tokens; a turn may hold at most {max_tokens} "
            "(FREEZE_OMNI_LLM_MAX_LEN less the system prompt and a full answer)"
        )
        self.turn_tokens = turn_tokens
        self.max_tokens = max_tokens
