"""The long-running agent: the pure planner, its async loop, the backend, its settings."""
