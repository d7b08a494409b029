"""`python -m devenv`: the same as the `devenv` command."""

from devenv.cli import run

run()
