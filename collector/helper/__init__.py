"""The control helper: fetches sites from an uncensored vantage point for enrolled probes."""
