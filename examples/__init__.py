"""Runnable examples of sessiond."""
