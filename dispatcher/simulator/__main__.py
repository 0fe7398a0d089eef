"""``python -m dispatcher.simulator``: the same as ``dispatcher simulate``."""

from dispatcher.simulator.cli import main

main()
