"""Talking to VICIdial from the library side: the Non-Agent API (:mod:`nonagent`), the
look-up of a job's lead and each server's look-up record (:mod:`lookup`), and what the
answers say about the job (:mod:`findings`: reconciliation's rules).

The Agent API's client, on the worker's hot path, lives with the workers
(``workers/vicidial.py``).
"""

__all__: list[str] = []
