"""Corpus readers, validation into documents, and sharding."""
