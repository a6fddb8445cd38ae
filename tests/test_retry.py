"""dsvc.retry: the one compare-and-swap retry loop, its budget and its backoff."""

from __future__ import annotations

import pytest

from dsvc import retry
from dsvc.errors import ConflictError


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    for n in range(40):
        waits = [retry.backoff(n) for _ in range(50)]
        cap = min(retry.MAX_WAIT, retry.FIRST_WAIT * 2**n)
        assert all(0 <= w <= cap for w in waits)
    assert max(retry.backoff(30) for _ in range(200)) > retry.MAX_WAIT / 2


def test_cas_retry_retries_lost_races_then_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    lost = iter(range(3))

    def attempt() -> str:
        if next(lost, None) is not None:
            raise ConflictError("lost")
        return "won"

    assert retry.cas_retry(attempt, "never") == "won"
    assert len(slept) == 3


def test_cas_retry_gives_up_after_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise ConflictError("lost")

    with pytest.raises(ConflictError, match="ref x is too contended; try again"):
        retry.cas_retry(attempt, "ref x is too contended; try again")
    assert len(calls) == retry.ATTEMPTS and len(slept) == retry.ATTEMPTS - 1


def test_other_errors_are_not_retried() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        retry.cas_retry(attempt, "never")
    assert calls == [1]
