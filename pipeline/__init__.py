"""The m3pipe engine (model, batching, encoding, Parquet sink) and its control plane.

The engine modules never import Celery: the queue workers call them as plain functions.
"""

__version__ = "0.1.0"
