"""Runs experiments: the runner, the control-helper client, scrubbing the probe's addresses."""
