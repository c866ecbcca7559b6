"""Everything that touches the live model: hooks, device summaries, the step buffer."""
