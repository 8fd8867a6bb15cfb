"""Every benchmark script starts and explains itself (`--help`): a moved import cannot rot them unseen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    p.name for p in (ROOT / "benchmarks").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


def _curve_rows() -> list[dict]:
    rows = []
    for variant, scale in (("before", 2.0), ("after", 1.0)):
        for n in (1, 2, 4):
            rows.append(
                {
                    "path": "server",
                    "variant": variant,
                    "sessions": n,
                    "speech_end_to_audio_p50_ms": f"{300 * n * scale:.0f}",
                    "speech_end_to_audio_p95_ms": "-" if n == 4 else f"{500 * n * scale:.0f}",
                    "underruns": n - 1,
                    "refused_sessions": 1 if n == 4 else 0,
                }
            )
    return rows


def test_bench_server_writes_the_curve_as_a_png_or_says_what_to_install(tmp_path, capsys) -> None:
    from benchmarks.bench_server import write_curve_png

    path = tmp_path / "curve.png"
    write_curve_png(_curve_rows(), str(path), 100.0)
    out = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not path.exists()
        assert "pip install -e '.[bench]'" in out and "matplotlib" in out
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(path) in out


def test_bench_server_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch) -> None:
    import builtins

    from benchmarks.bench_server import write_curve_png

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    path = tmp_path / "curve.png"
    write_curve_png(_curve_rows(), str(path), 100.0)
    assert not path.exists()
    assert "pip install -e '.[bench]'" in capsys.readouterr().out


def test_the_soak_reads_the_servers_quiet_response_lines() -> None:
    """The soak judges an answer that went quiet by the server's log line for it: the two must agree."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import soak
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from app.sessions.realtime import STALLED_RESPONSE_FORMAT

    line = STALLED_RESPONSE_FORMAT % ("sess_1", "resp_ab12", 10.4, "engine_behind_real_time", {}, {}, {}, {})
    late = "no response.done after 38 s (nothing for 30 s) in response resp_ab12; last events: []"
    other = "no response.done after 40 s (nothing for 30 s) in response resp_cd34; last events: []"
    result: dict = {}
    off_path = [("audio", "Unexpected", late, 0.0, 1.0), ("audio", "Unexpected", other, 0.0, 1.0)]
    soak.judge_off_path(result, off_path, f"2026-11-30 03:27:37,342 WARNING app.sessions.realtime: {line}\n")
    assert result["engine_behind"] == {"audio: Unexpected": 1}
    assert result["unexpected"] == {"audio: Unexpected": 1}  # no server line for it: unexplained
    assert result["server_quiet_responses_by_cause"] == {"engine_behind_real_time": 1}
