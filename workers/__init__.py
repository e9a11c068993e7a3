"""Celery app and tasks (queue pipeline; see issue 3). Thin: all work is in pipeline/."""
