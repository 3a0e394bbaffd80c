"""chunkfs benchmark harness (issue 6): dedup savings against the ideal and against peer tools.

Run from the repository root: ``python -m benchmarks.run --quick``.
"""
