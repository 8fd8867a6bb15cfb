"""Client event parsing, session configuration and server event output of app.sessions.events."""

from __future__ import annotations

import base64
import json
import re
import typing
from typing import Any

import pytest
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import TypeAdapter

from app.sessions import events as ev
from app.sessions.audio_formats import WireFormat

SDK_SERVER_EVENTS = TypeAdapter(RealtimeServerEvent)
SDK_BETA_SERVER_EVENTS = TypeAdapter(BetaServerEvent)


def union_type_names(union: Any) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(member.model_fields["type"].annotation)[0] for member in members}


def parse(payload: dict[str, Any]) -> ev.ClientEvent:
    return ev.parse_client_event(json.dumps(payload))


def parse_error(raw: str | bytes | dict[str, Any]) -> ev.ProtocolError:
    text = json.dumps(raw) if isinstance(raw, dict) else raw
    with pytest.raises(ev.ProtocolError) as caught:
        ev.parse_client_event(text)
    return caught.value


# --- names follow the SDK --------------------------------------------------------------------------------------


def test_we_accept_every_ga_client_event_of_the_sdk() -> None:
    assert set(ev.CLIENT_EVENT_TYPES) == union_type_names(RealtimeClientEvent)


def test_every_server_event_we_send_exists_in_the_sdk() -> None:
    ours = {
        cls.model_fields["type"].default
        for cls in vars(ev).values()
        if isinstance(cls, type)
        and issubclass(cls, ev.ServerEvent)
        and isinstance(cls.model_fields["type"].default, str)
    }
    assert {"session.created", "response.output_audio.delta", "response.done", "error"} <= ours
    assert ours <= union_type_names(RealtimeServerEvent)


# --- valid client events ----------------------------------------------------------------------------------------


def test_append_decodes_audio_and_keeps_event_id() -> None:
    audio = bytes(range(10))
    event = parse(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode(), "event_id": "c1"}
    )
    assert isinstance(event, ev.InputAudioBufferAppend)
    assert event.audio_bytes == audio
    assert event.event_id == "c1"


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ({"type": "input_audio_buffer.commit"}, ev.InputAudioBufferCommit),
        ({"type": "input_audio_buffer.clear"}, ev.InputAudioBufferClear),
        ({"type": "output_audio_buffer.clear"}, ev.OutputAudioBufferClear),
        ({"type": "response.cancel"}, ev.ResponseCancel),
        ({"type": "response.cancel", "response_id": "resp_1"}, ev.ResponseCancel),
        ({"type": "response.create"}, ev.ResponseCreate),
        ({"type": "conversation.item.retrieve", "item_id": "i"}, ev.ConversationItemRetrieve),
        ({"type": "conversation.item.delete", "item_id": "i"}, ev.ConversationItemDelete),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 1500},
            ev.ConversationItemTruncate,
        ),
        ({"type": "session.update", "session": {"type": "realtime"}}, ev.SessionUpdate),
    ],
)
def test_simple_client_events_parse(payload: dict[str, Any], cls: type) -> None:
    assert isinstance(parse(payload), cls)


def test_unknown_fields_are_tolerated() -> None:
    event = parse({"type": "input_audio_buffer.commit", "future_field": {"x": 1}})
    assert isinstance(event, ev.InputAudioBufferCommit)


def test_conversation_item_create_with_text_and_audio() -> None:
    audio = base64.b64encode(b"\x00\x01" * 8).decode()
    event = parse(
        {
            "type": "conversation.item.create",
            "previous_item_id": "root",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello"}, {"type": "input_audio", "audio": audio}],
            },
        }
    )
    assert isinstance(event, ev.ConversationItemCreate)
    assert event.item.content is not None
    assert event.item.content[0].text == "hello"
    assert event.item.content[1].audio_bytes == b"\x00\x01" * 8


def test_response_create_overrides_in_ga_and_beta_names() -> None:
    ga = parse(
        {"type": "response.create", "response": {"instructions": "be brief", "output_modalities": ["text"]}}
    )
    beta = parse(
        {"type": "response.create", "response": {"modalities": ["text"], "max_response_output_tokens": 50}}
    )
    assert isinstance(ga, ev.ResponseCreate) and isinstance(beta, ev.ResponseCreate)
    assert ga.response is not None and ga.response.instructions == "be brief"
    assert beta.response is not None and beta.response.output_modalities == ["text"]
    assert beta.response.max_output_tokens == 50


# --- every parse error gives the right code ---------------------------------------------------------------------

B64_AUDIO = base64.b64encode(b"\x00\x00").decode()


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        (b"\xff\xfe\x00", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('"session.update"', "invalid_json", None),
        ({"event_id": "e"}, "missing_required_parameter", "type"),
        ({"type": 7}, "invalid_type", "type"),
        ({"type": "response.audio.delta"}, "unknown_event_type", "type"),
        ({"type": "no.such.event"}, "unknown_event_type", "type"),
        ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
        ({"type": "input_audio_buffer.append", "audio": 123}, "invalid_type", "audio"),
        ({"type": "input_audio_buffer.append", "audio": "abc"}, "invalid_base64", "audio"),
        ({"type": "input_audio_buffer.append", "audio": "@@@@"}, "invalid_base64", "audio"),
        (
            {"type": "input_audio_buffer.append", "audio": B64_AUDIO, "event_id": 5},
            "invalid_type",
            "event_id",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "100"},
            "invalid_type",
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": -5},
            "invalid_value",
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0},
            "missing_required_parameter",
            "audio_end_ms",
        ),
        ({"type": "conversation.item.create", "item": "hello"}, "invalid_type", "item"),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "content": []}},
            "missing_required_parameter",
            "item.role",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}},
            "invalid_value",
            "item.role",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": "a!"}],
                },
            },
            "invalid_base64",
            "item.content.0.audio",
        ),
        ({"type": "session.update"}, "missing_required_parameter", "session"),
        ({"type": "session.update", "session": {"type": "transcription"}}, "invalid_value", "session.type"),
        ({"type": "session.update", "session": {"instructions": 5}}, "invalid_type", "session.instructions"),
        (
            {"type": "session.update", "session": {"output_modalities": ["video"]}},
            "invalid_value",
            "session.output_modalities.0",
        ),
        (
            {"type": "session.update", "session": {"max_output_tokens": "lots"}},
            "invalid_type",
            "session.max_output_tokens",
        ),
        (
            {"type": "session.update", "session": {"max_output_tokens": 0}},
            "invalid_value",
            "session.max_output_tokens",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {"type": "session.update", "session": {"input_audio_format": "mp3"}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {
                "type": "session.update",
                "session": {"turn_detection": {"type": "server_vad", "threshold": 1.5}},
            },
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"type": "session.update", "session": {"turn_detection": {"aggressiveness": 4}}},
            "invalid_value",
            "session.audio.input.turn_detection.aggressiveness",
        ),
        (
            {"type": "session.update", "session": {"turn_detection": {"silence_duration_ms": "long"}}},
            "invalid_type",
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
        (
            {"type": "response.create", "response": {"max_output_tokens": 2.5}},
            "invalid_type",
            "response.max_output_tokens",
        ),
    ],
)
def test_parse_errors_have_code_and_param(raw: Any, code: str, param: str | None) -> None:
    error = parse_error(raw)
    assert (error.code, error.param) == (code, param)
    assert error.message


def test_error_carries_the_client_event_id() -> None:
    assert parse_error({"type": "nope", "event_id": "evt_9"}).event_id == "evt_9"
    assert (
        parse_error({"type": "input_audio_buffer.append", "audio": "x", "event_id": "evt_8"}).event_id
        == "evt_8"
    )
    assert parse_error("{").event_id is None


def test_oversized_append_is_refused() -> None:
    huge = "A" * ((ev.MAX_APPEND_AUDIO_BYTES + 2) // 3 * 4 + 4)
    error = parse_error({"type": "input_audio_buffer.append", "audio": huge})
    assert (error.code, error.param) == ("invalid_value", "audio")


def test_protocol_error_becomes_an_sdk_error_event() -> None:
    error = parse_error({"type": "nope", "event_id": "evt_1"})
    payload = json.loads(ev.ErrorEvent.from_protocol_error(error).to_json() or "")
    assert payload["type"] == "error"
    assert payload["error"] == {
        "type": "invalid_request_error",
        "code": "unknown_event_type",
        "message": error.message,
        "param": "type",
        "event_id": "evt_1",
    }
    assert type(SDK_SERVER_EVENTS.validate_python(payload)).__name__ == "RealtimeErrorEvent"


# --- session configuration ----------------------------------------------------------------------------------------


def apply(config: ev.SessionConfig, session: dict[str, Any]) -> ev.SessionConfig:
    event = parse({"type": "session.update", "session": session})
    assert isinstance(event, ev.SessionUpdate)
    return config.apply(event.session)


def test_defaults_are_pcm24k_and_server_vad() -> None:
    config = ev.SessionConfig()
    assert config.input_format.wire == WireFormat("pcm16", 24000)
    assert config.turn_detection is not None and config.turn_detection.type == "server_vad"
    assert (config.turn_detection.prefix_padding_ms, config.turn_detection.silence_duration_ms) == (300, 500)


def test_partial_update_changes_only_what_was_sent() -> None:
    base = apply(
        ev.SessionConfig(),
        {"instructions": "be kind", "audio": {"output": {"format": {"type": "audio/pcmu"}}}},
    )
    updated = apply(
        base, {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}
    )
    assert updated.instructions == "be kind"
    assert updated.output_format.wire == WireFormat("pcmu", 8000)
    assert updated.input_format.wire == WireFormat("pcm16", 16000)
    assert updated.turn_detection == base.turn_detection
    assert apply(updated, {"instructions": ""}).instructions == ""


@pytest.mark.parametrize("off", [None, "none", {"type": "none"}])
def test_turn_detection_off_means_push_to_talk(off: Any) -> None:
    config = apply(ev.SessionConfig(), {"audio": {"input": {"turn_detection": off}}})
    assert config.turn_detection is None
    assert apply(config, {"instructions": "x"}).turn_detection is None
    assert config.to_ga()["audio"]["input"]["turn_detection"] is None


def test_turn_detection_fields_and_null_defaults() -> None:
    config = apply(
        ev.SessionConfig(),
        {
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": None,
                        "aggressiveness": 3,
                        "prefix_padding_ms": 200,
                        "silence_duration_ms": 700,
                        "create_response": False,
                        "interrupt_response": False,
                    }
                }
            }
        },
    )
    turn = config.turn_detection
    assert turn is not None
    assert (turn.threshold, turn.aggressiveness, turn.prefix_padding_ms, turn.silence_duration_ms) == (
        0.5,
        3,
        200,
        700,
    )
    assert not turn.create_response and not turn.interrupt_response
    semantic = apply(
        config, {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}
    )
    assert semantic.turn_detection is not None and semantic.turn_detection.eagerness == "high"


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("pcm16", WireFormat("pcm16", 24000)),
        ("g711_ulaw", WireFormat("pcmu", 8000)),
        ("g711_alaw", WireFormat("pcma", 8000)),
    ],
)
def test_legacy_format_names_are_accepted_in_both_shapes(name: str, wire: WireFormat) -> None:
    beta = apply(ev.SessionConfig(), {"input_audio_format": name, "output_audio_format": name})
    ga_with_string = apply(
        ev.SessionConfig(), {"audio": {"input": {"format": name}, "output": {"format": name}}}
    )
    assert beta.input_format.wire == beta.output_format.wire == wire
    assert ga_with_string.input_format.wire == wire
    assert beta.to_beta()["input_audio_format"] == name


def test_beta_flat_session_equals_ga_nested_session() -> None:
    flat = {
        "modalities": ["text", "audio"],
        "instructions": "hi",
        "voice": "alloy",
        "input_audio_format": "g711_ulaw",
        "output_audio_format": "pcm16",
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
        "input_audio_transcription": {"model": "whisper-1"},
        "max_response_output_tokens": 200,
        "temperature": 0.8,
    }
    nested = {
        "type": "realtime",
        "output_modalities": ["text", "audio"],
        "instructions": "hi",
        "max_output_tokens": 200,
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                "transcription": {"model": "whisper-1"},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
        },
    }
    base = ev.SessionConfig(id="sess_1")
    assert apply(base, flat) == apply(base, nested)


def test_session_events_parse_in_the_sdk_in_both_dialects() -> None:
    config = apply(
        ev.SessionConfig(model="freeze-omni"), {"instructions": "hi", "input_audio_format": "g711_alaw"}
    )
    ga = json.loads(ev.SessionUpdated(session=config).to_json("ga") or "")
    beta = json.loads(ev.SessionCreated(session=config).to_json("beta") or "")
    assert ga["session"]["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert ga["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert beta["session"]["input_audio_format"] == "g711_alaw"
    assert beta["session"]["turn_detection"]["type"] == "server_vad"
    sdk_ga = SDK_SERVER_EVENTS.validate_python(ga)
    assert sdk_ga.type == "session.updated"
    assert sdk_ga.session.instructions == "hi"  # type: ignore[union-attr]
    # The beta SDK type lists only OpenAI's model names (it does not validate what it receives).
    del beta["session"]["model"]
    assert SDK_BETA_SERVER_EVENTS.validate_python(beta).session.input_audio_format == "g711_alaw"  # type: ignore[union-attr]


# --- server events --------------------------------------------------------------------------------------------------


def test_event_and_object_ids() -> None:
    ids = {ev.new_event_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"event_[0-9a-f]{20}", event_id) for event_id in ids)
    assert re.fullmatch(r"item_[0-9a-f]{20}", ev.new_item_id())
    assert re.fullmatch(r"resp_[0-9a-f]{20}", ev.new_response_id())
    assert ev.InputAudioBufferCleared().event_id != ev.InputAudioBufferCleared().event_id


def assistant_item(status: str = "in_progress") -> ev.ConversationItem:
    return ev.ConversationItem(
        id="item_a",
        role="assistant",
        status=status,
        content=[ev.ContentPart(type="output_audio", transcript="hi")],
    )


def sample_server_events() -> list[ev.ServerEvent]:
    content = {"response_id": "resp_1", "item_id": "item_a"}
    return [
        ev.InputAudioBufferSpeechStarted(audio_start_ms=700, item_id="item_u"),
        ev.InputAudioBufferSpeechStopped(audio_end_ms=4200, item_id="item_u"),
        ev.InputAudioBufferCommitted(item_id="item_u"),
        ev.InputAudioBufferCleared(),
        ev.ConversationItemAdded(item=ev.ConversationItem(id="item_u", role="user", content=[])),
        ev.ConversationItemDone(
            item=ev.ConversationItem(id="item_u", role="user", status="completed", content=[])
        ),
        ev.ConversationItemCreated(item=ev.ConversationItem(id="item_u", role="user", content=[])),
        ev.ConversationItemRetrieved(item=assistant_item("completed")),
        ev.ConversationItemTruncated(item_id="item_a", audio_end_ms=900),
        ev.ConversationItemDeleted(item_id="item_a"),
        ev.ResponseCreated(response=ev.RealtimeResponse(id="resp_1")),
        ev.ResponseOutputItemAdded(response_id="resp_1", item=assistant_item()),
        ev.ResponseContentPartAdded(**content, part=ev.ContentPart(type="audio", transcript="")),
        ev.ResponseOutputAudioDelta(**content, delta=base64.b64encode(b"\x00\x00").decode()),
        ev.ResponseOutputAudioTranscriptDelta(**content, delta="hi"),
        ev.ResponseOutputAudioDone(**content),
        ev.ResponseOutputAudioTranscriptDone(**content, transcript="hi"),
        ev.ResponseOutputTextDelta(**content, delta="hi"),
        ev.ResponseOutputTextDone(**content, text="hi"),
        ev.ResponseContentPartDone(**content, part=ev.ContentPart(type="audio", transcript="hi")),
        ev.ResponseOutputItemDone(response_id="resp_1", item=assistant_item("completed")),
        ev.ResponseDone(
            response=ev.RealtimeResponse(
                id="resp_1",
                status="cancelled",
                status_details=ev.ResponseStatusDetails(type="cancelled", reason="turn_detected"),
                output=[assistant_item("incomplete")],
                usage=ev.Usage(total_tokens=3, input_tokens=1, output_tokens=2),
            )
        ),
        ev.RateLimitsUpdated(
            rate_limits=[ev.RateLimit(name="requests", limit=10, remaining=9, reset_seconds=1.0)]
        ),
    ]


@pytest.mark.parametrize("event", sample_server_events(), ids=lambda event: event.type)
def test_server_events_parse_in_the_sdk_as_their_own_type(event: ev.ServerEvent) -> None:
    payload = json.loads(event.to_json() or "")
    assert payload["event_id"].startswith("event_")
    parsed = SDK_SERVER_EVENTS.validate_python(payload)
    assert parsed.type == event.type
    if isinstance(event, ev.ResponseDone):
        assert parsed.response.status == "cancelled"  # type: ignore[union-attr]
        assert parsed.response.status_details.reason == "turn_detected"  # type: ignore[union-attr]


@pytest.mark.parametrize("event", sample_server_events(), ids=lambda event: event.type)
def test_server_events_in_the_beta_dialect(event: ev.ServerEvent) -> None:
    payload = event.payload("beta")
    if event.type == "conversation.item.done":
        assert payload is None
        return
    assert payload is not None
    parsed = SDK_BETA_SERVER_EVENTS.validate_python(payload)
    assert parsed.type == payload["type"]


def test_beta_renames() -> None:
    content = {"response_id": "r", "item_id": "i"}
    assert (ev.ResponseOutputAudioDelta(**content, delta="").payload("beta") or {})[
        "type"
    ] == "response.audio.delta"
    transcript = ev.ResponseOutputAudioTranscriptDone(**content, transcript="")
    assert (transcript.payload("beta") or {})["type"] == "response.audio_transcript.done"
    added = ev.ConversationItemAdded(item=assistant_item()).payload("beta") or {}
    assert added["type"] == "conversation.item.created"
    assert added["item"]["content"][0]["type"] == "audio"
    done = ev.ResponseDone(response=ev.RealtimeResponse(output=[assistant_item()])).payload("beta") or {}
    assert done["response"]["modalities"] == ["audio"] and "output_modalities" not in done["response"]
    assert done["response"]["output"][0]["content"][0]["type"] == "audio"


def test_items_are_written_without_nulls_but_events_keep_theirs() -> None:
    payload = json.loads(ev.InputAudioBufferCommitted(item_id="item_1").to_json() or "")
    assert payload["previous_item_id"] is None
    item = json.loads(ev.ConversationItemAdded(item=assistant_item()).to_json() or "")["item"]
    assert item == {
        "id": "item_a",
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "hi"}],
    }
