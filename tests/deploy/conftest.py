"""Fleet fixtures: two `freeze-omni serve` processes on the tiny model behind Debian's nginx (see fleet.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.deploy.fleet import Fleet, start_fleet, stop_fleet

if TYPE_CHECKING:
    from app.model import TinyPaths


@pytest.fixture(scope="module")
def fleet(tiny_model_dir: TinyPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One fleet shared by a module's tests that leave it whole."""
    shared = start_fleet(tiny_model_dir, tmp_path_factory.mktemp("shared-fleet"))
    yield shared
    stop_fleet(shared)


@pytest.fixture
def fleet_factory(
    tiny_model_dir: TinyPaths, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Fleet]]:
    """`fleet_factory()` starts a fleet of its own for a test that breaks it; stopped at the end of the
    test. The processes' and nginx's logs are printed when the test fails."""
    fleets: list[Fleet] = []

    def start() -> Fleet:
        fleets.append(start_fleet(tiny_model_dir, tmp_path_factory.mktemp("fleet")))
        return fleets[-1]

    yield start
    report = getattr(request.node, "rep_call", None)
    for fleet in fleets:
        if report is not None and report.failed:
            print(fleet.logs())
        stop_fleet(fleet)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
