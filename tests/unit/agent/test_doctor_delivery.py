"""``doctor`` and ``status`` on delivery: the state disk and records awaiting receipts."""

from __future__ import annotations

import pytest

from agent.cli.doctor import FAIL, OK, WARN, check_delivery, check_disk
from agent.cli.status import delivery_line
from agent.uplink.outbox import OutboxLimits, OutboxStats

MB = 1_000_000
LIMITS = OutboxLimits(min_free_bytes=32 * MB)


@pytest.mark.parametrize(
    ("free", "level", "words"),
    [
        (None, WARN, "cannot tell"),
        (10 * MB, FAIL, "new measurements are refused"),
        (100 * MB, WARN, "nearly full"),  # under 4 x 32 MB: warned before it is full
        (500 * MB, OK, "500 MB free"),
    ],
)
def test_check_disk(free: int | None, level: str, words: str) -> None:
    check = check_disk(free, LIMITS)
    assert check.level == level and words in check.message
    assert bool(check.fix) == ((level == WARN and free is not None) or level == FAIL)


def stats(count: int = 0, awaiting: int = 0, refused: int = 0, **counters: int) -> OutboxStats:
    return OutboxStats(count, count * 1000, None, dict(counters), awaiting_receipt=awaiting,
                       refused_kept=refused, disk_free=123 * MB)


@pytest.mark.parametrize(
    ("s", "level", "words"),
    [
        (None, OK, "nothing measured"),
        (stats(5, 3, receipted=10), OK, "3 sent and awaiting"),
        (stats(5, 3, 2, receipted=10), WARN, "2 refused by a collector"),
        (stats(5, 5, resent=5), WARN, "no receipt ever came"),
        (stats(5, 5), OK, "5 sent and awaiting"),  # just sent: not yet a worry
    ],
)
def test_check_delivery(s: OutboxStats | None, level: str, words: str) -> None:
    check = check_delivery(s)
    assert check.level == level and words in check.message


def test_status_delivery_line() -> None:
    line = delivery_line(stats(4, 2, 1, receipted=7, resent=3, collector_refused=1,
                               disk_full_refused=9).to_json())
    assert line == (
        "delivery:  2 sent, awaiting a collector's receipt; 7 receipted, 3 sent again; "
        "1 refused by a collector (1 kept); disk 123.0 MB free, 9 measurements refused for a "
        "full disk"
    )
