"""``python -m mpsearch.cli``: the same as the ``mpsearch`` command."""

from mpsearch.cli import main

main()
