"""``python -m dispatcher.intake [--host H] [--port P]``: the same as ``dispatcher serve``."""

from dispatcher.intake.cli import serve_command

serve_command(prog_name="dispatcher serve")
