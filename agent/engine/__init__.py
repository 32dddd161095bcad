"""Runs experiments: the runner, the control-helper client, scrubbing, slots, small state files."""
