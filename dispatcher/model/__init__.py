"""The model: what a lead and a job are, and every error, as plain Python.

No module here talks to Redis or to VICIdial: the lead and the agent target's column
rules (:mod:`lead`, VICIdial's ``external_add_lead``), the list target's (:mod:`list_lead`,
the Non-Agent API's ``add_lead``) and its options (:mod:`list_options`), the
normalisations both share (:mod:`normalise`), the job, its message and its states
(:mod:`jobs`), the job's marker in a lead field (:mod:`marker`), the dialers file
(:mod:`dialers`), lead files (:mod:`leadfile`) and the errors tree (:mod:`errors`). The
store, the workers and the command line build on it.
"""

__all__: list[str] = []
