"""``python -m latbench.cli``: the ``latbench`` command."""
from . import main

main()
