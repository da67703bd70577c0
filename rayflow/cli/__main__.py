"""`python -m rayflow.cli`: the same as the `rayflow` command."""

from rayflow.cli import main

main()
