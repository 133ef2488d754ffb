"""Optional integrations, each behind an extra (``pip install 'sessiond-client[pydantic]'``)."""
