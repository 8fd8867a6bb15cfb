"""Wire codecs, base64 and resampling of app.sessions.audio_formats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from app.sessions import audio_formats as af

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = bytes(range(256))


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


# --- PCM16 and base64 -------------------------------------------------------------------------------------------


def test_pcm16_is_little_endian_and_scaled_by_32768() -> None:
    decoded = af.decode_pcm16(b"\x01\x00\x00\x80\xff\x7f")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, np.array([1, -32768, 32767], dtype=np.float32) / 32768)


def test_pcm16_round_trip_is_exact_for_every_int16() -> None:
    data = ALL_INT16.astype("<i2").tobytes()
    assert af.encode_pcm16(af.decode_pcm16(data)) == data


def test_float_to_int16_clips_and_cleans_non_finite_values() -> None:
    values = np.array([2.0, -2.0, 1.0, -1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    assert af.float_to_int16(values).tolist() == [32767, -32768, 32767, -32768, 0, 32767, -32768]


def test_pcm16_rejects_odd_byte_count() -> None:
    with pytest.raises(af.AudioFormatError, match="even number of bytes"):
        af.decode_pcm16(b"\x00\x00\x00")


def test_base64_round_trip() -> None:
    data = bytes(range(256)) * 3
    assert af.decode_base64(af.encode_base64(data)) == data
    assert af.decode_base64("") == b""


@pytest.mark.parametrize("text", ["abc", "!!!!", "YQ=", "YWJj\nZGVm", "YWJ*"])
def test_bad_base64_raises_clear_error(text: str) -> None:
    with pytest.raises(af.Base64Error, match="not valid base64"):
        af.decode_base64(text)


# --- G.711 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("law", "value", "code"),
    [
        ("pcmu", 0, 0xFF),
        ("pcmu", 3, 0xFF),  # below the first step
        ("pcmu", 32767, 0x80),
        ("pcmu", -32768, 0x00),
        ("pcma", 0, 0xD5),
        ("pcma", -1, 0x55),
        ("pcma", 32767, 0xAA),
        ("pcma", -32768, 0x2A),
    ],
)
def test_g711_encodes_reference_values(law: str, value: int, code: int) -> None:
    assert af.g711_encode_int16(np.array([value], dtype=np.int16), law) == bytes([code])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("law", "code", "value"),
    [
        ("pcmu", 0xFF, 0),
        ("pcmu", 0x7F, 0),
        ("pcmu", 0x80, 32124),
        ("pcmu", 0x00, -32124),
        ("pcma", 0xD5, 8),
        ("pcma", 0x55, -8),
        ("pcma", 0xAA, 32256),
        ("pcma", 0x2A, -32256),
    ],
)
def test_g711_decodes_reference_values(law: str, code: int, value: int) -> None:
    assert af.g711_decode_int16(bytes([code]), law).tolist() == [value]  # type: ignore[arg-type]


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_g711_round_trip_error_is_within_half_a_step(law: str) -> None:
    decoded = af.g711_decode_int16(af.g711_encode_int16(ALL_INT16, law), law).astype(np.int32)  # type: ignore[arg-type]
    error = np.abs(decoded - ALL_INT16.astype(np.int32))
    # Steps are 1/16 of a segment whose lower edge is at least |x|/2, so half a step is at most |x|/32; the
    # constant covers the smallest segment and the low bits each law drops before quantising.
    magnitude = np.minimum(np.abs(ALL_INT16.astype(np.int32)), 32124)
    assert np.all(error <= magnitude / 32 + 16)
    assert error[np.abs(ALL_INT16.astype(np.int32)) < 64].max() <= 16


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_g711_is_monotonic_and_codes_survive_decode_encode(law: str) -> None:
    decoded = af.g711_decode_int16(af.g711_encode_int16(ALL_INT16, law), law)  # type: ignore[arg-type]
    assert np.all(np.diff(decoded.astype(np.int32)) >= 0)
    codes = np.frombuffer(ALL_CODES, dtype=np.uint8)
    again = np.frombuffer(af.g711_encode_int16(af.g711_decode_int16(ALL_CODES, law), law), dtype=np.uint8)  # type: ignore[arg-type]
    differing = set(codes[again != codes].tolist())
    # u-law has two zeros; 0x7F (negative zero) decodes to 0 which encodes as 0xFF.
    assert differing == ({0x7F} if law == "pcmu" else set())


@pytest.mark.parametrize(
    ("encode", "decode"), [(af.encode_ulaw, af.decode_ulaw), (af.encode_alaw, af.decode_alaw)]
)
def test_g711_speech_band_signal_keeps_about_38_db_snr(encode, decode) -> None:  # type: ignore[no-untyped-def]
    signal = sine(440, 8000, 1.0, amplitude=0.5) + sine(1250, 8000, 1.0, amplitude=0.2)
    restored = decode(encode(signal))
    assert len(encode(signal)) == signal.size
    snr_db = 10 * np.log10(np.sum(signal**2) / np.sum((restored - signal) ** 2))
    assert snr_db > 33


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_g711_matches_the_standard_library_reference_where_it_still_exists(law: str) -> None:
    # Only an oracle: the server never imports audioop (deprecated, removed in Python 3.13).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    linear = ALL_INT16.astype("<i2").tobytes()
    if law == "pcmu":
        expected_codes, expected_linear = audioop.lin2ulaw(linear, 2), audioop.ulaw2lin(ALL_CODES, 2)
    else:
        expected_codes, expected_linear = audioop.lin2alaw(linear, 2), audioop.alaw2lin(ALL_CODES, 2)
    assert af.g711_encode_int16(ALL_INT16, law) == expected_codes  # type: ignore[arg-type]
    assert af.g711_decode_int16(ALL_CODES, law).astype("<i2").tobytes() == expected_linear  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["pcm16", "pcmu", "pcma"])
def test_encode_decode_audio_dispatch(encoding: str) -> None:
    signal = sine(300, 8000, 0.1)
    data = af.encode_audio(signal, encoding)  # type: ignore[arg-type]
    assert len(data) == signal.size * (2 if encoding == "pcm16" else 1)
    np.testing.assert_allclose(af.decode_audio(data, encoding), signal, atol=0.02)  # type: ignore[arg-type]


def test_wire_format_checks_rates_and_measures_duration() -> None:
    assert af.PCM16_24K.duration_ms(4800) == pytest.approx(100.0)
    assert af.PCMU.duration_ms(800) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="8000 Hz"):
        af.WireFormat("pcmu", 16000)


# --- resampling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [(24000, 16000), (16000, 24000), (8000, 16000), (24000, 8000), (44100, 16000)]
)
def test_resample_gives_expected_length_and_keeps_pitch(src: int, dst: int) -> None:
    out = af.resample(sine(440, src, 1.0), src, dst)
    assert out.dtype == np.float32
    assert abs(out.size - dst) <= 1
    assert peak_frequency(out, dst) == pytest.approx(440, abs=2)


def test_resample_same_rate_is_identity() -> None:
    signal = sine(440, 16000, 0.1)
    assert af.resample(signal, 16000, 16000) is signal


def test_stream_resampler_matches_one_shot_for_any_chunking() -> None:
    signal = sine(440, 24000, 2.0) + sine(3000, 24000, 2.0, amplitude=0.1)
    rng = np.random.default_rng(0)
    resampler = af.StreamResampler(24000, 16000)
    pieces, pos = [], 0
    while pos < signal.size:
        size = int(rng.integers(1, 1500))
        pieces.append(resampler.process(signal[pos : pos + size]))
        pos += size
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)
    one_shot = af.resample(signal, 24000, 16000)
    assert streamed.size == one_shot.size
    np.testing.assert_allclose(streamed, one_shot, atol=1e-5)


def test_stream_resampler_starts_afresh_after_flush() -> None:
    resampler = af.StreamResampler(24000, 16000)
    signal = sine(440, 24000, 0.5)
    first = np.concatenate([resampler.process(signal), resampler.flush()])
    second = np.concatenate([resampler.process(signal), resampler.flush()])
    np.testing.assert_array_equal(first, second)


def test_input_converter_handles_odd_splits_and_resamples_to_16k() -> None:
    signal = sine(440, 24000, 1.0)
    data = af.encode_pcm16(signal)
    whole = af.InputAudioConverter(af.PCM16_24K)
    expected = np.concatenate([whole.push(data), whole.flush()])
    split = af.InputAudioConverter(af.PCM16_24K)
    cuts = [0, 1, 2, 777, 4801, 20000, len(data)]
    got = np.concatenate(
        [split.push(data[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)] + [split.flush()]
    )
    assert abs(expected.size - 16000) <= 1
    np.testing.assert_array_equal(got, expected)


def test_input_converter_decodes_g711_at_8k() -> None:
    signal = sine(440, 8000, 1.0)
    converter = af.InputAudioConverter(af.PCMU)
    out = np.concatenate([converter.push(af.encode_ulaw(signal)), converter.flush()])
    assert abs(out.size - 16000) <= 1
    assert peak_frequency(out, 16000) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    ("wire", "bytes_per_second"), [(af.PCMA, 8000), (af.PCM16_16K, 32000), (af.PCM16_24K, 48000)]
)
def test_output_converter_encodes_model_audio_for_the_client(
    wire: af.WireFormat, bytes_per_second: int
) -> None:
    converter = af.OutputAudioConverter(wire)
    signal = sine(440, 24000, 1.0)
    data = converter.push(signal[:10000]) + converter.push(signal[10000:]) + converter.flush()
    assert abs(len(data) - bytes_per_second) <= 2
    decoded = af.decode_audio(data, wire.encoding)
    assert peak_frequency(decoded, wire.sample_rate) == pytest.approx(440, abs=2)
