"""What producers and operators do, built on the model and the store: enqueue
(:mod:`producer`), choose and replay dead letters (:mod:`selection`), read the fleet
(:mod:`status`), erase a phone (:mod:`erasure`), expire old letters (:mod:`retention`).
"""

__all__: list[str] = []
