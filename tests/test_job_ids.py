"""Job ids: 26 Crockford base32 digits of (48-bit ms timestamp << 80 | 80 random bits)."""

from __future__ import annotations

import time

from offload.job import new_job_id

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def value_of(job_id: str) -> int:
    value = 0
    for digit in job_id:
        value = value * 32 + ALPHABET.index(digit)
    return value


def test_an_id_is_the_time_and_random_bits_in_crockford_base32() -> None:
    before = int(time.time() * 1000)
    ids = [new_job_id() for _ in range(1000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == 1000
    for job_id in ids:
        assert len(job_id) == 26 and set(job_id) <= set(ALPHABET)
        value = value_of(job_id)
        assert value < 2**128
        assert before <= value >> 80 <= after
    assert len({value_of(i) & (2**80 - 1) for i in ids}) == 1000  # the random part varies


def test_ids_sort_by_the_millisecond_they_were_made() -> None:
    first = new_job_id()
    time.sleep(0.002)
    assert new_job_id() > first
