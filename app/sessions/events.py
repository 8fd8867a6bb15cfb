"""The OpenAI Realtime wire events we accept and send, and the session configuration they carry.

Names and fields follow the GA types of the ``openai`` SDK (``openai/types/realtime/``); the beta dialect
differs in a few names and in a flat session shape, so client input in either shape is normalised to the GA
one here, and server events can be written out in either (:meth:`ServerEvent.to_json`).
Client models ignore fields we do not use and are validated strictly where we use the value, so a bad
event turns into a :class:`ProtocolError` the caller reports with an ``error`` event, keeping the session.
"""

# One import place for the protocol: its parts live in the modules below.
from app.sessions.client_events import (  # noqa: F401
    CLIENT_EVENT_TYPES,
    ClientEvent,
    ClientEventBase,
    ConversationItemCreate,
    ConversationItemDelete,
    ConversationItemRetrieve,
    ConversationItemTruncate,
    InputAudioBufferAppend,
    InputAudioBufferClear,
    InputAudioBufferCommit,
    OutputAudioBufferClear,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    parse_client_event,
)
from app.sessions.items import (  # noqa: F401
    ContentPart,
    ContentType,
    ConversationItem,
    RealtimeResponse,
    ResponseParams,
    ResponseStatusDetails,
    Usage,
)
from app.sessions.protocol_base import (  # noqa: F401
    MAX_APPEND_AUDIO_BYTES,
    Dialect,
    ErrorCode,
    Modality,
    ProtocolError,
    TokenLimit,
    Tolerated,
    new_event_id,
    new_id,
    new_item_id,
    new_response_id,
    new_session_id,
)
from app.sessions.server_events import (  # noqa: F401
    ConversationItemAdded,
    ConversationItemCreated,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemRetrieved,
    ConversationItemTruncated,
    ErrorDetail,
    ErrorEvent,
    InputAudioBufferCleared,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    RateLimit,
    RateLimitsUpdated,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreated,
    ResponseDone,
    ResponseOutputAudioDelta,
    ResponseOutputAudioDone,
    ResponseOutputAudioTranscriptDelta,
    ResponseOutputAudioTranscriptDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
)
from app.sessions.session_config import (  # noqa: F401
    AudioFormat,
    AudioInputPatch,
    AudioOutputPatch,
    AudioPatch,
    SessionConfig,
    SessionPatch,
    TurnDetection,
)
