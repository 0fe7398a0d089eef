"""``python -m dispatcher.intake [--host H] [--port P] [--no-intake]``: ``dispatcher serve``."""

from dispatcher.cli.serve import serve_command

serve_command(prog_name="dispatcher serve")
