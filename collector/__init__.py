"""Vigil collector: control helper, ingest, storage, API, dashboard, outage detection."""

__version__ = "0.1.0"
