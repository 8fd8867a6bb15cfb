"""Server metrics in the Prometheus text format (no client library needed for this handful)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Metrics:
    """Counters and recent samples, rendered on demand."""

    sessions_opened: int = 0
    sessions_refused: int = 0
    sessions_resumed: int = 0
    responses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    rest_turns: int = 0
    first_audio_s: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    real_time_factor: deque[float] = field(default_factory=lambda: deque(maxlen=2000))

    def count_response(self, status: str) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def render(self, gauges: dict[str, float], engine_rows: dict[str, tuple[int, int]]) -> str:
        """Prometheus exposition; `gauges` are read live, `engine_rows` is stage -> (rows, forwards)."""
        lines = [
            "# TYPE freeze_omni_sessions_opened_total counter",
            f"freeze_omni_sessions_opened_total {self.sessions_opened}",
            "# TYPE freeze_omni_sessions_refused_total counter",
            f"freeze_omni_sessions_refused_total {self.sessions_refused}",
            "# TYPE freeze_omni_sessions_resumed_total counter",
            f"freeze_omni_sessions_resumed_total {self.sessions_resumed}",
            "# TYPE freeze_omni_rest_turns_total counter",
            f"freeze_omni_rest_turns_total {self.rest_turns}",
            "# TYPE freeze_omni_responses_total counter",
        ]
        lines += [
            f'freeze_omni_responses_total{{status="{k}"}} {v}' for k, v in sorted(self.responses.items())
        ]
        lines.append("# TYPE freeze_omni_errors_total counter")
        lines += [f'freeze_omni_errors_total{{code="{k}"}} {v}' for k, v in sorted(self.errors.items())]
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE freeze_omni_{name} gauge", f"freeze_omni_{name} {value}"]
        for name, samples in (
            ("first_audio_seconds", self.first_audio_s),
            ("real_time_factor", self.real_time_factor),
        ):
            values = list(samples)
            lines.append(f"# TYPE freeze_omni_{name} summary")
            for q in (0.5, 0.95):
                lines.append(f'freeze_omni_{name}{{quantile="{q}"}} {_quantile(values, q)}')
            lines += [f"freeze_omni_{name}_sum {sum(values)}", f"freeze_omni_{name}_count {len(values)}"]
        lines.append("# TYPE freeze_omni_batch_rows_mean gauge")
        for stage, (rows, forwards) in sorted(engine_rows.items()):
            mean = rows / forwards if forwards else 0.0
            lines.append(f'freeze_omni_batch_rows_mean{{stage="{stage}"}} {mean}')
        return "\n".join(lines) + "\n"
