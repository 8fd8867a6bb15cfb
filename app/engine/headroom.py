"""Real-time headroom: a moving measure of step time against the real-time budget, and admission from it.

A speaking session needs one codec token per token period (25 ms of audio). An answer behind its
playback gets `tokens_per_step` tokens in a step, so with `n` answers all catching up a step must end
within `tokens_per_step` token periods while it makes `n * tokens_per_step` tokens. The meter fits
`step seconds = fixed + per_token * codec tokens made` to the last `window_steps` steps that made
speech (a least-squares line with forgetting; the plain ratio while the token count has not varied,
which errs on the side of refusing), and `load = fixed + per_session * sessions` to the steps that
only heard users (of the 160 ms a chunk lasts). The predicted load of `n` sessions is the worse of
the two with all `n` taking part. When the codec runs on its own lane (thread), its time per second of
audio it gives is measured too: `n` answers need `n` seconds of audio a second from it, and the
predicted load is the worst of the three. Admission refuses a session whose admission would push that past
`max_load`: everyone talking at once must still keep real time.

The fit only knows the steps it has seen. Before any step made speech it predicts nothing (a cold
server, or one whose sessions have only listened), and a fit made of steps where one or two answers
spoke extrapolates to many: a burst of connections, all decided within a second on one frozen
estimate before any of them speaks, was admitted far past what the machine keeps (16 asked, 11
admitted where 5 was the measured limit). So admission also counts the sessions beyond the most
answers ever measured speaking together in one step: at most `unmeasured_sessions` of those. A cold
server admits that many; each time more answers speak at once and are measured, the bound moves up.

Tests drive the measure with `step_seconds_hook` (a function from the measured seconds of a step to
the seconds recorded), never with a timer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# A single slow step (warm-up, a GC pause) counts as at most this many budgets (token periods per token).
MAX_STEP_LOAD = 2.0


@dataclass
class LoadFit:
    """`y ~ fixed + slope * x`, from exponentially weighted moments (x: tokens or sessions)."""

    weight: float
    steps: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    mean_xx: float = 0.0
    mean_xy: float = 0.0

    def add(self, x: float, y: float) -> None:
        # The first steps count fully (a plain mean), later ones with the window's weight.
        w = max(self.weight, 1.0 / (self.steps + 1))
        self.mean_x += w * (x - self.mean_x)
        self.mean_y += w * (y - self.mean_y)
        self.mean_xx += w * (x * x - self.mean_xx)
        self.mean_xy += w * (x * y - self.mean_xy)
        self.steps += 1

    def line(self) -> tuple[float, float]:
        """(fixed, slope); (0, 0) before any step."""
        if self.steps == 0 or self.mean_x <= 0:
            return 0.0, 0.0
        variance = self.mean_xx - self.mean_x**2
        if variance > 0.25:  # x has varied by about one: a slope can be told apart
            slope = (self.mean_xy - self.mean_x * self.mean_y) / variance
            fixed = self.mean_y - slope * self.mean_x
            if slope > 0 and fixed >= 0:
                return fixed, slope
        return 0.0, self.mean_y / self.mean_x  # proportional: the cautious reading

    def predict(self, x: float) -> float:
        fixed, slope = self.line()
        return fixed + slope * x


@dataclass
class Headroom:
    """What `/readyz` and `/metrics` report of one engine."""

    load: float  # predicted load with every open session active (1.0: the whole real-time budget)
    max_load: float  # admission limit (0: measured admission off)
    headroom_sessions: int  # sessions that can still be admitted (also capped by max_sessions)
    step_ms: float  # mean time of the steps that made speech, over the window
    budget_ms: float  # what a step may take in which every answer catches up (tokens per step x 25 ms)
    listen_load: float  # the same prediction for steps that only hear users (160 ms budget)
    measured_speaking: int  # the most answers measured speaking together in one step (since start)


@dataclass
class RealtimeMeter:
    """Measures step time against the real-time budget and says whether one more session fits."""

    token_period_s: float
    chunk_period_s: float
    max_load: float = 0.9
    window_steps: int = 50
    tokens_per_step: int = 1  # codec tokens an answer behind its playback gets per step
    unmeasured_sessions: int = 2  # sessions admitted beyond the most measured speaking together
    step_seconds_hook: Callable[[float], float] | None = None
    speech_fit: LoadFit = field(init=False)  # step seconds against codec tokens made in the step
    listen_fit: LoadFit = field(init=False)  # step load (of 160 ms) against sessions heard
    speech_step_s: float = 0.0
    codec_s_per_audio_s: float = 0.0  # codec lane: seconds of decoding per second of audio (0: not measured)
    codec_batches: int = 0
    most_speaking: int = 0  # the most answers that made speech in one measured step

    def __post_init__(self) -> None:
        self.speech_fit = LoadFit(1.0 / self.window_steps)
        self.listen_fit = LoadFit(1.0 / self.window_steps)

    @property
    def speech_budget_s(self) -> float:
        """What a step in which every answer catches up may take: the audio it makes per answer."""
        return self.tokens_per_step * self.token_period_s

    def record(self, seconds: float, codec_tokens: int, listening: int, speaking: int) -> None:
        """One step took `seconds`, made `codec_tokens` codec tokens (all answers together, `speaking`
        answers) and heard `listening` sessions' chunks. Steps that did neither (text only) are not
        real-time bound."""
        if self.step_seconds_hook is not None:
            seconds = self.step_seconds_hook(seconds)
        if codec_tokens > 0:
            self.most_speaking = max(self.most_speaking, speaking)
            weight = max(self.speech_fit.weight, 1.0 / (self.speech_fit.steps + 1))
            self.speech_step_s += weight * (seconds - self.speech_step_s)
            ceiling = MAX_STEP_LOAD * self.token_period_s * codec_tokens
            self.speech_fit.add(codec_tokens, min(seconds, ceiling))
        elif listening > 0:
            self.listen_fit.add(listening, min(seconds / self.chunk_period_s, MAX_STEP_LOAD))

    def record_codec(self, seconds: float, audio_seconds: float) -> None:
        """The codec lane took `seconds` to decode windows giving `audio_seconds` of answer audio."""
        if audio_seconds <= 0:
            return
        weight = max(1.0 / self.window_steps, 1.0 / (self.codec_batches + 1))
        ratio = min(seconds / audio_seconds, MAX_STEP_LOAD)
        self.codec_s_per_audio_s += weight * (ratio - self.codec_s_per_audio_s)
        self.codec_batches += 1

    def codec_load(self, sessions: int) -> float:
        """The codec lane's load with `sessions` answers all speaking (of its one thread)."""
        return self.codec_s_per_audio_s * max(sessions, 0)

    def speech_load(self, sessions: int) -> float:
        """The load of a step in which `sessions` answers all catch up (`tokens_per_step` tokens each)."""
        if sessions <= 0:
            return 0.0
        seconds = self.speech_fit.predict(sessions * self.tokens_per_step)
        return seconds / self.speech_budget_s

    def predicted_load(self, sessions: int) -> float:
        """The load with `sessions` sessions all speaking, or all being heard: the worse of the two."""
        listen = self.listen_fit.predict(sessions) if sessions else 0.0
        return max(self.speech_load(sessions), listen, self.codec_load(sessions))

    @property
    def measured_limit(self) -> int:
        """The most sessions admission lets in before more answers have been measured speaking at once."""
        return self.most_speaking + self.unmeasured_sessions

    def admits(self, open_sessions: int) -> bool:
        """Whether one more session keeps every session in real time, as measured."""
        if self.max_load <= 0 or open_sessions == 0:
            return True  # one session is always let in: nothing else can tell what it costs
        if open_sessions + 1 > self.measured_limit:
            return False  # past what has been measured: wait until more answers have spoken together
        return self.predicted_load(open_sessions + 1) <= self.max_load

    def refusal(self, open_sessions: int) -> str:
        """Why `admits(open_sessions)` said no, for the client and the log."""
        if open_sessions + 1 > self.measured_limit:
            return (
                f"{open_sessions} session(s) open and at most {self.most_speaking} answer(s) measured "
                f"speaking together; admission goes at most {self.unmeasured_sessions} beyond what it has "
                "measured"
            )
        return (
            f"{open_sessions} session(s) would take {self.predicted_load(open_sessions + 1):.0%} of the "
            f"real-time budget (limit {self.max_load:.0%})"
        )

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
            step_ms=round(self.speech_step_s * 1000, 3),
            budget_ms=round(self.speech_budget_s * 1000, 3),
            listen_load=round(self.listen_fit.predict(open_sessions) if open_sessions else 0.0, 4),
            measured_speaking=self.most_speaking,
        )
