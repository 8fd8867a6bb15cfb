"""Errors the engine raises to its callers."""


class EngineError(RuntimeError):
    """Base class."""


class CapacityError(EngineError):
    """No replica has room for another session."""


class SessionClosedError(EngineError):
    """The session was closed, or failed, before the request completed."""


class EngineStoppedError(EngineError):
    """The engine is shutting down or not started."""
