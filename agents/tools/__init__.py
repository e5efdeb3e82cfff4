"""Developer tools that ship with the agent (capture, benchmarks)."""
