"""Vigil probe agent: measures censorship from a volunteer's network."""

__version__ = "0.1.0"
SOFTWARE_NAME = "vigil-agent"
