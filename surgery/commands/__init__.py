"""Subcommands of the `surgery` CLI; see surgery/cli.py for the module contract."""
