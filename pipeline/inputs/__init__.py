"""Inputs to accepted records and shards: bounded reading by format, validation, the
duplicate and oversize policies, and cutting into shards. Nothing here knows of a queue."""
