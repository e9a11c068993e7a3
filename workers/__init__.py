"""The Celery app, its transport and tasks. Thin: all work is in pipeline/."""
