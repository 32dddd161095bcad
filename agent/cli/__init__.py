"""The vigil-agent command line: one module per subcommand, imported on first use."""
