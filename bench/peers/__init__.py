"""Peer BERT implementations benchmarked against ours: venv set-up and one runner script per implementation."""
