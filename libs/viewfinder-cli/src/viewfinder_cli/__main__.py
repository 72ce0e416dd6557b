"""``python -m viewfinder_cli``."""

from viewfinder_cli.app import main

main()
