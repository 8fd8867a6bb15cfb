"""Transcript words go out no earlier than the audio that speaks them (app.sessions.transcript_aligner)."""

from __future__ import annotations

from app.sessions.transcript_aligner import TranscriptAligner, split_words


def test_words_keep_every_character() -> None:
    for text in ["Two plus two is four.", " leading and  double spaces ", "", "   ", "one"]:
        assert "".join(split_words(text)) == text
    assert split_words(" a bc ") == [" a", " bc "]


def test_words_wait_for_their_audio_and_for_the_segment_to_be_measured() -> None:
    aligner = TranscriptAligner()
    aligner.add_segment("ab cd", audio_at_ms=0.0)  # 2 + 3 characters over the segment's audio
    assert aligner.due(10_000.0) == ""  # its length is not known yet
    aligner.add_segment(" ef", audio_at_ms=1000.0)  # the first segment is 1000 ms long
    assert aligner.due(399.0) == ""
    assert aligner.due(400.0) == "ab"  # "ab" ends at 2/5 of it
    assert aligner.due(999.0) == ""
    assert aligner.due(1000.0) == " cd"
    assert aligner.due(5000.0) == ""  # the second segment's end is not known
    aligner.end_audio(1500.0)
    assert aligner.due(1499.0) == ""
    assert aligner.due(1500.0) == " ef"
    assert aligner.rest() == ""


def test_the_rest_is_everything_not_yet_released_in_order() -> None:
    aligner = TranscriptAligner()
    aligner.add_segment("one two", 0.0)
    aligner.add_segment(" three", 100.0)
    assert aligner.due(60.0) == "one"
    assert aligner.rest() == " two three"
    assert aligner.due(1e9) == ""
