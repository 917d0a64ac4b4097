"""Speed, memory and evaluation-cost benchmarks: `python -m benchmarks.run_all` (what `make bench` runs)."""
