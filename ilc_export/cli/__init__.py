"""The command lines (``ilc-run``, ``ilc-export``): thin Typer commands over the library.

May import: every ``ilc_export`` layer. ``ilc-run`` imports the tooling (export, verify)
only inside the commands that need it, so coding images never loads it.
"""
