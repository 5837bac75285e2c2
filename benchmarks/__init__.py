"""tune_hw's performance suite: `python -m benchmarks.run` writes benchmarks/RESULTS.md."""
