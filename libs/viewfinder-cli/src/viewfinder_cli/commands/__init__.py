"""The CLI's commands, one module per area; ``viewfinder_cli.app`` puts them together."""
