"""What tests/ and benchmarks/ both use to exercise m3pipe: a local S3-compatible server and
deterministic corpora. Nothing in the pipeline imports it (the layers contract in
pyproject.toml); it is here, not in tests/, so that neither of the two imports the other."""
