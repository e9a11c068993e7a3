"""Producers: inputs/ reads, validates and cuts a corpus into shards; submit.py registers
a job and drops its shards into Redis with backpressure."""
