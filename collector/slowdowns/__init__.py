"""Whole-network slowdowns: the probes' benign transfer rates against their own past.

``rates`` reads a throttling record's benign reference rate, ``detector`` (pure) turns rates
into a signal per network and country and finds slowdown events, ``store`` keeps samples and
events in the collector's database, ``watch`` runs passes and notifies webhooks.
"""
