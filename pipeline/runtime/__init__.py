"""What a worker does with one shard, without Celery: run it, the models it serves, its metrics."""
