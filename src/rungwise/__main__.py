"""`python -m rungwise` = the `rungwise` command."""

from rungwise.cli import main

main()
