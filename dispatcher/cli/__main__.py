"""``python -m dispatcher.cli``: the same as the ``dispatcher`` console script."""

from dispatcher.cli import main

main()
