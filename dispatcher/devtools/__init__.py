"""Running the pieces on one machine: an embedded Redis server and local worker
processes, for ``dispatcher demo``, the tests and the benchmarks (not for production).
"""

__all__: list[str] = []
