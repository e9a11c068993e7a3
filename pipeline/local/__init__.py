"""No-queue drivers: encode and rerank one input on this machine, and `m3pipe run` (Redis and
workers on one box).
"""
