"""Real-time headroom: a moving measure of step time against the real-time budget, and admission from it.

A speaking session needs one codec token per token period (25 ms of audio); a step that makes `t`
codec tokens for each answer taking part (the mean over them) must end within `t` token periods; a step that only hears users must end within one 160 ms chunk
period. The meter keeps, over the last `window_steps` steps of each kind, the load of a step (its
seconds over its budget) against the number of sessions taking part in it, fits
`load = fixed + per_session * sessions` to them (a least-squares line with forgetting; the plain
ratio while the session count has not varied), and predicts the load of a step in which every open
session, plus the newcomer, takes part. Admission refuses a session that would push that prediction
past `max_load`: everyone talking at once must still keep real time.

Tests drive the measure with `step_seconds_hook` (a function from the measured seconds of a step to
the seconds recorded), never with a timer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# A single slow step (warm-up, a GC pause) counts as at most this many budgets.
MAX_STEP_LOAD = 2.0


@dataclass
class LoadFit:
    """`load ~ fixed + per_session * sessions`, from exponentially weighted moments."""

    weight: float
    steps: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    mean_xx: float = 0.0
    mean_xy: float = 0.0
    last_load: float = 0.0

    def add(self, sessions: int, load: float) -> None:
        # The first steps count fully (a plain mean), later ones with the window's weight.
        w = max(self.weight, 1.0 / (self.steps + 1))
        x = float(sessions)
        self.mean_x += w * (x - self.mean_x)
        self.mean_y += w * (load - self.mean_y)
        self.mean_xx += w * (x * x - self.mean_xx)
        self.mean_xy += w * (x * load - self.mean_xy)
        self.steps += 1
        self.last_load = load

    def line(self) -> tuple[float, float]:
        """(fixed, per_session) load; (0, 0) before any step."""
        if self.steps == 0 or self.mean_x <= 0:
            return 0.0, 0.0
        variance = self.mean_xx - self.mean_x**2
        if variance > 0.25:  # session counts have varied by about one: a slope can be told apart
            slope = (self.mean_xy - self.mean_x * self.mean_y) / variance
            fixed = self.mean_y - slope * self.mean_x
            if slope > 0 and fixed >= 0:
                return fixed, slope
        return 0.0, self.mean_y / self.mean_x  # proportional: the cautious reading

    def predict(self, sessions: int) -> float:
        fixed, per_session = self.line()
        return fixed + per_session * sessions


@dataclass
class Headroom:
    """What `/readyz` and `/metrics` report of one engine."""

    load: float  # predicted load with every open session active (1.0: the whole real-time budget)
    max_load: float  # admission limit (0: measured admission off)
    headroom_sessions: int  # sessions that can still be admitted (also capped by max_sessions)
    step_ms: float  # mean step time over the window, answer steps
    budget_ms: float  # what an answer step may take (mean over the window: tokens made x 25 ms)
    listen_load: float  # the same prediction for steps that only hear users (160 ms budget)


@dataclass
class RealtimeMeter:
    """Measures step time against the real-time budget and says whether one more session fits."""

    token_period_s: float
    chunk_period_s: float
    max_load: float = 0.9
    window_steps: int = 50
    step_seconds_hook: Callable[[float], float] | None = None
    answer_fit: LoadFit = field(init=False)
    listen_fit: LoadFit = field(init=False)
    answer_step_s: float = 0.0

    def __post_init__(self) -> None:
        self.answer_fit = LoadFit(1.0 / self.window_steps)
        self.listen_fit = LoadFit(1.0 / self.window_steps)
        self.answer_budget_s = self.token_period_s

    answer_budget_s: float = field(init=False)

    def record(self, seconds: float, answering: bool, sessions: int, tokens_per_answer: float = 1.0) -> None:
        """One step took `seconds`; `answering`: it made answer text or audio, `tokens_per_answer` codec
        tokens for each answer on average (at least one token period counts); `sessions`: taking part."""
        if sessions <= 0:
            return
        if self.step_seconds_hook is not None:
            seconds = self.step_seconds_hook(seconds)
        if answering:
            weight = max(self.answer_fit.weight, 1.0 / (self.answer_fit.steps + 1))
            budget = self.token_period_s * max(tokens_per_answer, 1.0)
            self.answer_step_s += weight * (seconds - self.answer_step_s)
            self.answer_budget_s += weight * (budget - self.answer_budget_s)
            self.answer_fit.add(sessions, min(seconds / budget, MAX_STEP_LOAD))
        else:
            self.listen_fit.add(sessions, min(seconds / self.chunk_period_s, MAX_STEP_LOAD))

    def predicted_load(self, sessions: int) -> float:
        """The load of a step in which `sessions` sessions all take part (the worse of the two kinds)."""
        return max(self.answer_fit.predict(sessions), self.listen_fit.predict(sessions))

    def admits(self, open_sessions: int) -> bool:
        """Whether one more session keeps every session in real time, as measured."""
        if self.max_load <= 0 or open_sessions == 0:
            return True  # one session is always let in: nothing else can tell what it costs
        return self.predicted_load(open_sessions + 1) <= self.max_load

    def headroom(self, open_sessions: int, free_places: int) -> Headroom:
        room = free_places
        if self.max_load > 0:
            fits = 0
            while fits < free_places and self.admits(open_sessions + fits):
                fits += 1
            room = fits
        return Headroom(
            load=round(self.predicted_load(open_sessions), 4),
            max_load=self.max_load,
            headroom_sessions=max(room, 0),
            step_ms=round(self.answer_step_s * 1000, 3),
            budget_ms=round(self.answer_budget_s * 1000, 3),
            listen_load=round(self.listen_fit.predict(open_sessions), 4),
        )
