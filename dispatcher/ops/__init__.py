"""What producers and operators do, built on the model and the store: enqueue
(:mod:`producer`), choose dead letters (:mod:`selection`) and replay, reconcile or
purge them (:mod:`dlq`), read the fleet (:mod:`status`), erase a phone
(:mod:`erasure`), expire old letters (:mod:`retention`).
"""

__all__: list[str] = []
