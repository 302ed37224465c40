"""Command-line tools: inspection (and, as they land, export and benchmarks)."""
