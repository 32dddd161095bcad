"""The vigil-collector command line: one module per subcommand, imported on first use."""
