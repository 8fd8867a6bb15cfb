"""Global CMVN: the stats file format of the published checkpoint and the module that applies it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

VAR_FLOOR = 1e-20


@dataclass
class CmvnStats:
    """Accumulated feature statistics as stored in ``audiollm/global_cmvn``.

    ``mean_stat`` is the per-dimension sum, ``var_stat`` the per-dimension sum of squares, and
    ``frame_num`` the number of frames accumulated.
    """

    mean_stat: list[float]
    var_stat: list[float]
    frame_num: float

    @classmethod
    def from_features(cls, feats: np.ndarray) -> CmvnStats:
        """Accumulate stats over a (T, D) feature matrix."""
        feats64 = np.asarray(feats, dtype=np.float64)
        return cls(
            mean_stat=feats64.sum(axis=0).tolist(),
            var_stat=np.square(feats64).sum(axis=0).tolist(),
            frame_num=float(feats64.shape[0]),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> CmvnStats:
        """Read the JSON stats file (keys ``mean_stat``, ``var_stat``, ``frame_num``)."""
        data = json.loads(Path(path).read_text())
        return cls(
            mean_stat=[float(v) for v in data["mean_stat"]],
            var_stat=[float(v) for v in data["var_stat"]],
            frame_num=float(data["frame_num"]),
        )

    @classmethod
    def from_kaldi_text(cls, path: str | Path) -> CmvnStats:
        """Read Kaldi text CMVN stats: a 2 x (D+1) matrix, row 0 = sums + count, row 1 = sums of squares."""
        tokens = Path(path).read_text().replace("[", " ").replace("]", " ").split()
        values = [float(t) for t in tokens]
        if len(values) % 2:
            raise ValueError(f"{path}: expected a 2 x (D+1) matrix, got {len(values)} numbers")
        width = len(values) // 2
        return cls(
            mean_stat=values[: width - 1], var_stat=values[width : 2 * width - 1], frame_num=values[width - 1]
        )

    def to_json(self, path: str | Path) -> None:
        """Write the stats in the published JSON layout."""
        payload = {"mean_stat": self.mean_stat, "var_stat": self.var_stat, "frame_num": self.frame_num}
        Path(path).write_text(json.dumps(payload))

    def mean_istd(self) -> tuple[np.ndarray, np.ndarray]:
        """Return float32 (mean, istd) computed as the published loader does.

        mean = sum / frames; var = sumsq / frames - mean^2, floored at 1e-20; istd = 1 / sqrt(var).
        Computed in float64 like the Python-float arithmetic of the original, then cast to float32.
        """
        if len(self.mean_stat) != len(self.var_stat):
            raise ValueError("mean_stat and var_stat differ in length")
        if self.frame_num <= 0:
            raise ValueError("frame_num must be positive")
        mean = [s / self.frame_num for s in self.mean_stat]
        istd = []
        for m, sq in zip(mean, self.var_stat, strict=True):
            var = max(sq / self.frame_num - m * m, VAR_FLOOR)
            istd.append(1.0 / math.sqrt(var))
        return np.asarray(mean, dtype=np.float32), np.asarray(istd, dtype=np.float32)


class GlobalCMVN(nn.Module):
    """Apply ``(x - mean) * istd`` over the last dimension.

    ``mean`` and ``istd`` are persistent buffers, so they appear in the state dict as
    ``global_cmvn.mean`` / ``global_cmvn.istd``. Quirk kept on purpose: the published loader builds
    them from the stats file and then loads the checkpoint non-strictly, so values stored in the
    checkpoint override the file; loading our state dict after construction reproduces that.
    The arithmetic runs in float32 whatever the input dtype, because log-fbank values (~10-20) minus
    their mean lose most of their precision in bf16; the result is returned in float32.
    """

    mean: Tensor
    istd: Tensor

    def __init__(
        self, dim: int, mean: Tensor | np.ndarray | None = None, istd: Tensor | np.ndarray | None = None
    ):
        super().__init__()
        mean_t = torch.zeros(dim) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        istd_t = torch.ones(dim) if istd is None else torch.as_tensor(istd, dtype=torch.float32)
        if mean_t.shape != (dim,) or istd_t.shape != (dim,):
            raise ValueError(f"CMVN stats must have shape ({dim},)")
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("istd", istd_t.clone())

    @classmethod
    def from_stats(cls, stats: CmvnStats) -> GlobalCMVN:
        """Build from accumulated stats (e.g. ``CmvnStats.from_json(path)``)."""
        mean, istd = stats.mean_istd()
        return cls(mean.shape[0], mean, istd)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise features (..., dim); returns float32."""
        return (x.float() - self.mean.float()) * self.istd.float()
