"""Talking to VICIdial from the library side: the Non-Agent API (look-ups) and the rules
that recognise the dispatcher's own lead in VICIdial (reconciliation's decisions).

The Agent API's client, on the worker's hot path, lives with the workers
(``workers/vicidial.py``).
"""

__all__: list[str] = []
