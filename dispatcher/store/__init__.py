"""The store: everything the dispatcher keeps in Redis, and the scripts that change it.

:mod:`keys` names every key; :mod:`execution` (with ``execution.lua``) is the job's
state machine, every transition one command, and :mod:`replies` what the scripts
answer, typed; :mod:`fleet` (``fleet.lua``) is liveness; :mod:`broker` (``broker.lua``)
the workers' reliable pop; :mod:`deadletter` the dead-letter store; :mod:`users` the
console's users; :mod:`layout` (``layout.lua``) the layout's version and
migrations; :mod:`connection` the Redis clients and the one translator of their
errors; :mod:`redis_health` what the dispatcher needs of Redis.
"""

__all__: list[str] = []
