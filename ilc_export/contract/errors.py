"""The root of every error a user can cause (a bad file, a wrong model, contradicting
options, a missing runtime): the CLIs catch ``IlcError`` (and ``OSError``) once and print one
line; anything else is a bug and keeps its traceback.

It imports nothing, so every layer (the contract included) derives its errors from it.
"""
from __future__ import annotations


class IlcError(Exception):
    """An error the user can fix; its message is one line that says how, or what is wrong."""
