"""The `streamrec` command: one module per command group."""
