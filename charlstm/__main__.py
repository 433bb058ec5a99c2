"""`python -m charlstm ...`: the same as the `charlstm` command."""

from charlstm.cli import main

main()
