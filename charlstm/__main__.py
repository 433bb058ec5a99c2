"""`python -m charlstm ...`: the same as the `charlstm` command (for a checkout that is not pip-installed)."""

from charlstm.cli import main

main()
