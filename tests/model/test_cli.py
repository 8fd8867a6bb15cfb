"""The `freeze-omni` console command, run as a subprocess: make-tiny, infer, help and input errors.

Each subprocess imports torch (about a second or more), so the runs are few and shared.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.model.checkpoint_io.layout import FreezeOmni
from app.model.pipeline import InferOptions, OfflinePipeline
from app.model.wav import read_wav, read_wav_bytes, resample, wav_bytes
from tests.conftest import freeze_omni_command


def _start(args: list[str], home: Path) -> subprocess.Popen[str]:
    # FREEZE_OMNI_HOME keeps any default-model fallback out of the real home directory; one
    # thread each, so the runs started side by side do not fight over the cores.
    env = {**os.environ, "FREEZE_OMNI_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [freeze_omni_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _wait(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return _wait(_start(args, home))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def made_tiny(workdir: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`freeze-omni make-tiny DIR`, run once; the other tests infer with what it wrote."""
    target = workdir / "tiny"
    return _run(["make-tiny", str(target)], workdir / "home"), target


@pytest.fixture(scope="module")
def model_args(made_tiny: tuple[subprocess.CompletedProcess[str], Path]) -> list[str]:
    done, target = made_tiny
    assert done.returncode == 0, done.stderr
    return ["--model-path", str(target / "checkpoints"), "--llm-path", str(target / "Qwen2-tiny")]


def _infer_args(model_args: list[str], wav_in: Path, wav_out: Path, *extra: str) -> list[str]:
    return [
        "infer",
        *model_args,
        *("--input-wav", str(wav_in), "--output-wav", str(wav_out), "--greedy", "--json"),
        *extra,
    ]


def _report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_make_tiny_prints_both_paths(made_tiny: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, target = made_tiny
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed == f"--model-path {target / 'checkpoints'} --llm-path {target / 'Qwen2-tiny'}"
    assert (target / "checkpoints" / "server.json").is_file()
    assert (target / "Qwen2-tiny" / "config.json").is_file()


def test_greedy_infer_twice_gives_the_same_answer_and_a_valid_wav(
    model_args: list[str], workdir: Path, spoken_wav: Path, spoken_16k: np.ndarray, tiny_model: FreezeOmni
) -> None:
    outputs = [workdir / "answer1.wav", workdir / "answer2.wav"]
    # Both runs at once: they share nothing but the read-only model files.
    running = [_start(_infer_args(model_args, spoken_wav, out), workdir / "home") for out in outputs]
    reports = [_report(_wait(process)) for process in running]
    for report, out in zip(reports, outputs, strict=True):
        assert report.pop("output_wav") == str(out)
        assert set(report.pop("timings")) == {"listen_s", "llm_answer_s", "speech_s", "total_s"}
    assert reports[0] == reports[1]
    assert outputs[0].read_bytes() == outputs[1].read_bytes()

    report = reports[0]
    assert report["segmentation"] == "server"
    assert [seg["codec_token_ids"] for seg in report["segments"]] == report["codec_token_ids"]
    assert [t for seg in report["segments"] for t in seg["llm_token_ids"]] == report["llm_token_ids"]
    assert "".join(seg["text"] for seg in report["segments"]) == report["text"]
    assert report["input_seconds"] == round(len(spoken_16k) / 16000, 3)
    assert len(report["state_probs"]) == len(report["states"]) == math.ceil(len(spoken_16k) / 2560)
    with wave.open(str(outputs[0]), "rb") as answer:
        assert (answer.getframerate(), answer.getnchannels(), answer.getsampwidth()) == (24000, 1, 2)
        frames = answer.getnframes()
        assert answer.getcomptype() == "NONE"
    assert frames == 600 * sum(len(ids) for ids in report["codec_token_ids"]) > 0
    assert abs(frames / 24000 - report["output_seconds"]) <= 0.0005

    # make-tiny is deterministic and the command runs the same pipeline as the library.
    expected = OfflinePipeline(tiny_model).run(spoken_16k, InferOptions.greedy())
    assert report["llm_token_ids"] == expected.token_ids
    assert report["text"] == expected.text
    assert report["codec_token_ids"] == expected.codec_ids
    # The subprocesses run one thread, this process may not: the float sums may round apart.
    written, _ = read_wav(outputs[0])
    reference, _ = read_wav_bytes(wav_bytes(expected.audio, 24000))
    np.testing.assert_allclose(written, reference, rtol=0, atol=2 / 32768)


def test_a_44k_stereo_input_is_resampled(model_args: list[str], workdir: Path, spoken_wav: Path) -> None:
    samples, rate = read_wav(spoken_wav)
    high = resample(samples, rate, 44100)
    stereo = np.stack([high, 0.5 * high], axis=1)
    source = workdir / "question_44k_stereo.wav"
    with wave.open(str(source), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(44100)
        out.writeframes((np.clip(stereo, -1, 1) * 32767).astype("<i2").tobytes())

    args = _infer_args(model_args, source, workdir / "answer_44k.wav", "--max-tokens", "8", "--threads", "1")
    report = _report(_run(args, workdir / "home"))
    mono, read_rate = read_wav(source)
    assert read_rate == 44100
    heard = len(resample(mono, 44100, 16000))
    assert report["input_seconds"] == round(heard / 16000, 3)
    assert abs(report["input_seconds"] - len(samples) / rate) < 0.01
    assert len(report["state_probs"]) == math.ceil(heard / 2560)
    assert 0 < len(report["llm_token_ids"]) <= 8
    with wave.open(str(workdir / "answer_44k.wav"), "rb") as answer:
        assert (answer.getframerate(), answer.getnchannels()) == (24000, 1)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.wav", None, "No such file"),
        ("notes.wav", b"these are not audio samples\n", "not a WAV file"),
    ],
)
def test_unreadable_input_exits_non_zero_with_a_message(
    workdir: Path, name: str, content: bytes | None, reason: str
) -> None:
    source = workdir / name
    if content is not None:
        source.write_bytes(content)
    output = workdir / f"{name}.out.wav"
    done = _run(["infer", "--input-wav", str(source), "--output-wav", str(output)], workdir / "home")
    assert done.returncode != 0
    assert f"error: cannot read {source}" in done.stderr
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()
    assert not (workdir / "home").exists()  # failed before making any default model


def test_help_lists_the_commands_and_the_infer_options(workdir: Path) -> None:
    top = _run(["--help"], workdir / "home")
    assert top.returncode == 0
    assert "infer" in top.stdout and "make-tiny" in top.stdout and "serve" in top.stdout
    infer = _run(["infer", "--help"], workdir / "home")
    assert infer.returncode == 0
    for option in (
        "--model-path",
        "--llm-path",
        "--input-wav",
        "--output-wav",
        "--greedy",
        "--json",
        "--strict-load",
        "--threads",
    ):
        assert option in infer.stdout


def test_strict_load_refuses_training_state_that_the_default_skips(
    made_tiny: tuple[subprocess.CompletedProcess[str], Path], workdir: Path, spoken_wav: Path
) -> None:
    import torch

    _, target = made_tiny
    polluted = workdir / "polluted"
    shutil.copytree(target, polluted, dirs_exist_ok=True)
    decoder_file = polluted / "checkpoints" / "decoder" / "final.pt"
    state = torch.load(decoder_file, weights_only=True)
    torch.save({"model": state, "step": 1200}, decoder_file)
    args = ["--model-path", str(polluted / "checkpoints"), "--llm-path", str(polluted / "Qwen2-tiny")]
    output = workdir / "strict.wav"
    done = _run(_infer_args(args, spoken_wav, output, "--strict-load", "--max-tokens", "4"), workdir / "home")
    assert done.returncode != 0
    assert "error: cannot load the model" in done.stderr
    assert f"unexpected entry 'step' (int) in {decoder_file}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()
    lenient = _run(_infer_args(args, spoken_wav, output, "--max-tokens", "4"), workdir / "home")
    assert lenient.returncode == 0, lenient.stderr
    assert f"{decoder_file}: loaded" in lenient.stderr and "step (int)" in lenient.stderr


def test_offline_segmentation_is_named_and_printed_segment_by_segment(
    model_args: list[str], workdir: Path, spoken_wav: Path, spoken_16k: np.ndarray, tiny_model: FreezeOmni
) -> None:
    output = workdir / "offline.wav"
    report = _report(
        _run(_infer_args(model_args, spoken_wav, output, "--segmentation", "offline"), workdir / "home")
    )
    assert report["segmentation"] == "offline"
    expected = OfflinePipeline(tiny_model).run(spoken_16k, InferOptions.greedy(segmentation="offline"))
    assert report["llm_token_ids"] == expected.token_ids
    assert len(report["segments"]) == len(expected.segments) > 1
    for printed, segment, ids in zip(report["segments"], expected.segments, expected.codec_ids, strict=True):
        assert printed["text"] == segment.text
        assert printed["llm_token_ids"] == segment.token_ids
        assert printed["codec_token_ids"] == ids
        assert printed["spoken_text"] and printed["spoken_text"][-1] in "。？！.?!"
    with wave.open(str(output), "rb") as answer:
        assert answer.getnframes() == 600 * sum(len(seg["codec_token_ids"]) for seg in report["segments"])
    refused = _run(
        _infer_args(model_args, spoken_wav, output, "--segmentation", "sentence"), workdir / "home"
    )
    assert refused.returncode != 0 and "invalid choice: 'sentence'" in refused.stderr
