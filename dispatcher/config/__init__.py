"""How a process is set up: settings from the environment, structured logs, redaction.

:mod:`settings` reads ``DISPATCHER_*`` (and a ``.env`` file) into typed settings;
:mod:`logs` configures structlog once per entry point; :mod:`redaction` is the one
redactor every text that may echo a password goes through.
"""

__all__: list[str] = []
