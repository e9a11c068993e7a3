"""The engine: model loading, tokenization, batching, the forward pass and output tables, for
embedding (embedder) and reranking (reranker). Imports neither Celery nor Redis.
"""
