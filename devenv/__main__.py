"""`python -m devenv`: the same as the `devenv` command."""

from devenv.cli.entry import run

run()
