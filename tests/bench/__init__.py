"""Benchmarks against named anchors (``./run-benchmarks.sh``; never collected by pytest)."""
