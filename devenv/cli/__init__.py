"""The `devenv` command line.

entry.py  the console script: a plain `devenv reset` without click, everything else handed to main
main.py   the click commands (the only module that imports click)
output.py what both print and how they exit: CI mode, status lines, errors and their exit codes
"""
