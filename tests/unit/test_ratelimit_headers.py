"""Reading a provider's rate-limit headers (workers.builtin.llmlimits)."""

from __future__ import annotations

import pytest

from foundry.ratelimit import ProviderAnswer
from workers.builtin.llmlimits import duration, provider_answer


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1.5", 1.5), ("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5),
     ("2m", 120.0), ("1s500ms", 1.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", [None, "", "soon", "1d", "s", "-1s", "1.2.3s", "ms", "-1", "nan", "inf"]
)
def test_unreadable_durations(text: str | None) -> None:
    assert duration(text) is None


def test_provider_answer_from_headers() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-reset-requests": "850ms",
        "x-ratelimit-remaining-tokens": "100",
    }
    assert provider_answer(200, headers) == ProviderAnswer(200, 7, 0.85, None)
    assert provider_answer(429, {"Retry-After": "3"}) == ProviderAnswer(429, None, None, 3.0)
    # a count without a readable reset says nothing; bad values count as absent
    assert provider_answer(200, {"x-ratelimit-remaining-requests": "7"}).remaining is None
    bad = {"x-ratelimit-remaining-requests": "-2", "x-ratelimit-reset-requests": "1s"}
    assert provider_answer(200, bad).remaining is None
    assert provider_answer(429, {"Retry-After": "Wed, 21 Oct 2015"}).retry_after is None
    assert provider_answer(429, {"Retry-After": "nan"}).retry_after is None
    assert provider_answer(429, {"Retry-After": "9999"}).retry_after == 300.0
