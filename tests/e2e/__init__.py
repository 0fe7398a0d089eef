"""Whole pipelines across layers with real ``celery worker`` processes, Redis and the simulator."""
