"""Worker programs (run as separate OS processes) and helpers for the client-library integration tests."""
