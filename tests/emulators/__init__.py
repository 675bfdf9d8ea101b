"""Stateful platform emulators served on 127.0.0.1 for the tests (see base.py)."""
