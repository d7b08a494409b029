"""`python -m devenv`: the same as the `devenv` command."""

from devenv.entry import run

run()
