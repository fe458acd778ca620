"""Subcommands of the `vjepa` command, one module each (`register(subparsers)`)."""
