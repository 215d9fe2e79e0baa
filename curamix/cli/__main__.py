"""``python -m curamix.cli``: the same as the ``curamix`` command."""

from curamix.cli import main

main()
