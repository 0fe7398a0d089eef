"""dispatcher/cli: the installed ``dispatcher`` command run as a subprocess."""
