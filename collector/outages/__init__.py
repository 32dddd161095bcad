"""Shutdown detection: the pure detector, its store, the background watch."""
