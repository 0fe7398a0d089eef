"""The worker side: ``celery -A workers worker`` finds the Celery app here.

``workers`` imports ``dispatcher``; ``dispatcher`` never imports ``workers``
(producers send the task by name).
"""

from workers.celery_app import app

__all__ = ["app"]
