"""m3pipe's benchmarks and studies: each module prints its figures and saves JSON
(benchmarks/report.py). Run one from the repository root as `python -m benchmarks.NAME`."""
