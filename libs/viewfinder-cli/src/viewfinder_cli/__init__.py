"""viewfinder's command line: ``viewfinder --help`` (entry point ``viewfinder_cli.app:main``)."""
