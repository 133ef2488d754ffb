"""The library's version: the one place it is written (the packaging metadata reads it from here)."""

__version__ = "0.1.0"
