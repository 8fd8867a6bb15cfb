"""The codec lane: windows decoded on its thread come back whole, in order, and a bad one fails alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine.codec_lane import CodecLane
from app.model import DecodeWindow, decode_windows


def _window(index: int, ids: list[int]) -> DecodeWindow:
    return DecodeWindow(
        index=index, token_ids=tuple(ids), trim_start=0, keep=None, final=True, seam_threshold=1
    )


def _collect_all(lane: CodecLane) -> list:
    results = []
    for _ in range(500):
        for batch in lane.collect(wait_s=0.05):
            results.extend(batch.results)
        if not lane.busy:
            return results
    pytest.fail("the codec lane never finished")


@pytest.mark.parametrize("threaded", [True, False])
def test_lane_gives_the_audio_of_a_direct_decode_in_order(tiny_model, threaded) -> None:
    codec = tiny_model.codec
    generator = torch.Generator().manual_seed(0)
    windows = [
        _window(i, torch.randint(0, 1024, (length,), generator=generator).tolist())
        for i, length in enumerate([30, 60, 60, 12])
    ]
    lane = CodecLane(codec, max_batch=2, threaded=threaded)
    try:
        lane.submit(["a", "b"], windows[:2])
        lane.submit(["c", "d"], windows[2:])  # queued behind a running decode: batched into the next
        results = _collect_all(lane)
    finally:
        lane.close()
    assert [r.owner for r in results] == ["a", "b", "c", "d"]
    assert all(r.error is None for r in results)
    for result, window in zip(results, windows, strict=True):
        np.testing.assert_allclose(result.audio, decode_windows(codec, [window])[0], atol=1e-5)


def test_a_window_that_cannot_decode_fails_only_its_owner(tiny_model) -> None:
    lane = CodecLane(tiny_model.codec, max_batch=8, threaded=True)
    try:
        lane.submit(["good", "bad"], [_window(0, [1] * 20), _window(1, [10**6] * 20)])  # no such code
        results = {r.owner: r for r in _collect_all(lane)}
    finally:
        lane.close()
    assert results["good"].error is None and results["good"].audio is not None
    assert results["bad"].error is not None and results["bad"].audio is None


def test_urgent_windows_are_decoded_first_a_few_at_a_time(tiny_model) -> None:
    lane = CodecLane(tiny_model.codec, max_batch=8, threaded=False, max_windows=2)
    windows = [_window(i, [i + 1] * 12) for i in range(5)]
    lane.submit(["far", "near", "first", "far2", "first2"], windows, [1.5, 0.2, -1.0, 1.8, -1.0])
    decodes = [[r.owner for r in batch.results] for batch in lane.collect()]
    assert decodes == [["first", "first2"], ["near", "far"], ["far2"]]
    assert not lane.busy
