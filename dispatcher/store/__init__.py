"""The store: everything the dispatcher keeps in Redis, and the scripts that change it.

:mod:`keys` names every key (each script lists the keys it touches at its top, in
the same notation); :mod:`execution` (with ``execution.lua``) is the job's state
machine, every transition one command, :mod:`replies` what the scripts answer, typed,
and :mod:`direct` the per-thread connections of its commands; :mod:`fleet`
(``fleet.lua``) is liveness; :mod:`broker` (``broker.lua``) the workers' reliable pop;
:mod:`deadletter` the dead-letter store (``deadletter_page.lua`` reads a page);
:mod:`phone_index` the phone index that erasure uses; :mod:`users` the console's
users; :mod:`activity` (``activity.lua``) the console's per-minute chart and
:mod:`stats` the fleet counters; :mod:`layout` (``layout.lua``) the layout's version
and migrations; :mod:`backend` one deployment's client, keys and scripts;
:mod:`connection` the Redis clients and the one translator of their errors;
:mod:`redis_health` what the dispatcher needs of Redis.
"""

__all__: list[str] = []
