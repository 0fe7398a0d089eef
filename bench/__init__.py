"""Benchmarks of the lead dispatcher: ``python -m bench [--quick] [--only NAME]``.

Each benchmark starts what it needs (a redis-server, the VICIdial simulator,
real ``celery`` worker processes), measures the systems it compares side by
side in rotated rounds of the same run, and reports ratios plus absolute
rates. Results are printed and written to bench/results/latest.json; nothing
is asserted (see docs/BENCHMARKS.md).

Benchmarks: ``throughput``, ``latency``, ``enqueue``, ``replay``, ``cost``.
"""
