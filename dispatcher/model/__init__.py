"""The model: what a lead and a job are, and every error, as plain Python.

No module here talks to Redis or to VICIdial: the lead's column rules and
normalisations (:mod:`lead`), the job, its message and its states (:mod:`jobs`), the
job's marker in a lead field (:mod:`marker`), the dialers file (:mod:`dialers`), lead
files (:mod:`leadfile`) and the errors tree (:mod:`errors`). The store, the workers and
the command line build on it.
"""

__all__: list[str] = []
