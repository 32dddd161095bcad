"""What outages and slowdowns have in common: an event per network or country that opens and
closes, is kept in the collector's store and is announced to webhooks.

``record`` is the event record's shape (its JSON and the batch bookkeeping of opened and
closed events), ``table`` its store operations on one table per kind, ``watch`` the detection
pass, its webhook notifications and the repeating loop.  The detectors themselves
(``collector.outages``, ``collector.slowdowns``) stay apart: their signals have nothing in
common.
"""
