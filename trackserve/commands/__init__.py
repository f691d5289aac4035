"""Subcommands of the ``trackserve`` command, one module each (see :mod:`trackserve.cli`)."""
