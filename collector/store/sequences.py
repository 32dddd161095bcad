"""Delivery gaps per probe kept beside the measurements, so ``/probes`` answers in O(probes).

A probe numbers its records (``probe_seq``: 1, 2, ... from its outbox); the store reports
per probe the highest number stored and how many distinct numbers arrived
(:class:`collector.store.base.DeliveryGaps`).  Counting that from the measurements reads
every numbered row of every probe, so the table ``probe_sequences`` keeps it:

    probe_sequences  probe_id -> last_seq (highest number), received (distinct numbers)

It is maintained like the rollups (collector.store.rollups): the ingest's folder adds the
rows numbered after the watermark ``rollup_state.folded`` in the same transaction that moves
the watermark, a question adds the rows after the watermark (the not-yet-folded tail), and
``prune`` takes off the numbers no folded row carries any more.  The invariant: for each
probe, ``received`` is the number of distinct ``probe_seq`` among its folded rows, and
``last_seq`` the highest of them; so a number stored twice (a probe that lost its outbox and
numbered again from 1, a record measured again) is counted once, as a count from scratch
does.

Everything here builds SQL; the stores run it.  ``folded(alias, mark)`` is the backend's
"this row is folded" condition, ``mark`` the watermark (a placeholder or a subquery).
"""

from __future__ import annotations

from collections.abc import Callable

TABLE = "probe_sequences"
Folded = Callable[[str, str], str]


def create_statement(count_type: str, suffix: str = "") -> str:
    return (f"CREATE TABLE {TABLE} (probe_id text PRIMARY KEY, last_seq {count_type} NOT NULL, "
            f"received {count_type} NOT NULL){suffix}")


def _new_numbers(seq: str, folded: Folded, mark: str, where: str, source: str) -> str:
    """Per probe, the highest number and how many distinct numbers of the measurements
    ``m`` matching ``where`` (a range of sequence numbers: ``source`` reads it by them) no
    folded row carries (so are not counted yet)."""
    return (
        "SELECT m.probe_id, MAX(m.probe_seq), COUNT(DISTINCT m.probe_seq) FROM "
        f"{source} WHERE {where} AND m.probe_seq IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM measurements o "
        f"WHERE o.probe_id = m.probe_id AND o.probe_seq = m.probe_seq AND {folded('o', mark)}) "
        "GROUP BY m.probe_id"
    )


def backfill_statement(folded: Folded, mark: str) -> str:
    """Fill the table from the folded rows already stored (the migration that adds it)."""
    return (f"INSERT INTO {TABLE} (probe_id, last_seq, received) "
            "SELECT probe_id, MAX(probe_seq), COUNT(DISTINCT probe_seq) FROM measurements m "
            f"WHERE probe_seq IS NOT NULL AND {folded('m', mark)} GROUP BY probe_id")


def fold_statement(seq: str, folded: Folded, greatest: str, source: str) -> str:
    """Add the rows numbered ``lo < seq <= hi`` (parameters ``lo, hi, lo``): only the numbers
    no row up to ``lo`` carries, each once.  ``source`` is the measurements as ``m``, read
    by their sequence numbers (SQLite: ``NOT INDEXED``, else it walks the whole index on
    probe_id and probe_seq to skip the GROUP BY's sort)."""
    select = _new_numbers(seq, folded, "?", f"m.{seq} > ? AND m.{seq} <= ?", source)
    # The parameters come in the order they appear: lo, hi (the range), then lo (folded).
    return (f"INSERT INTO {TABLE} (probe_id, last_seq, received) {select} "
            f"ON CONFLICT (probe_id) DO UPDATE SET "
            f"last_seq = {greatest}({TABLE}.last_seq, excluded.last_seq), "
            f"received = {TABLE}.received + excluded.received")


def tail_select(seq: str, folded: Folded, source: str) -> str:
    """Per probe, what the rows after the watermark add (parameters: watermark twice)."""
    return _new_numbers(seq, folded, "?", f"m.{seq} > ?", source)


def gone_select(pairs: int, folded: Folded) -> str:
    """Of ``pairs`` (probe id, number) pairs (parameters, then the watermark), those no folded
    row carries any more (after ``prune`` deleted some)."""
    values = ", ".join(["(?, CAST(? AS BIGINT))"] * pairs)
    return (f"SELECT v.column1, v.column2 FROM (VALUES {values}) AS v WHERE NOT EXISTS "
            "(SELECT 1 FROM measurements o WHERE o.probe_id = v.column1 "
            f"AND o.probe_seq = v.column2 AND {folded('o', '?')})")


def relast_statement(folded: Folded) -> str:
    """Take ``?`` numbers off a probe's count and set its highest number to the highest among
    its folded rows (parameters: watermark, how many, probe id)."""
    return (f"UPDATE {TABLE} SET last_seq = COALESCE((SELECT MAX(o.probe_seq) FROM measurements o "
            f"WHERE o.probe_id = {TABLE}.probe_id AND o.probe_seq IS NOT NULL AND "
            f"{folded('o', '?')}), 0), received = received - ? WHERE probe_id = ?")


DELETE_EMPTY = f"DELETE FROM {TABLE} WHERE received <= 0"
