"""`python -m ada` is the `ada` command."""

from ada.cli import main

main(prog_name="ada")
