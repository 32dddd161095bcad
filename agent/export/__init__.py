"""Exporting records in other formats."""
