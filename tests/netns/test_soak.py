"""The soak harness, one minute of it (`ztunnel-py bench soak --minutes 1`): 1000 req/s across
both nodes plus connection churn, and the agents neither fail a request nor leak memory,
descriptors or tasks after the warm-up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.bench.soak import render, run_soak
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("s"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def test_one_minute_of_load_and_churn_leaves_no_error_and_no_leak(bed: Testbed) -> None:
    result = run_soak(bed, minutes=1, rate=1000, churn=20, every=5, say=print)
    print(render(result))
    assert result.requests > 50_000, render(result)
    assert result.connections > 500, render(result)
    assert result.errors == result.connection_errors == 0, result.errors_by_reason
    assert result.ok, render(result)
