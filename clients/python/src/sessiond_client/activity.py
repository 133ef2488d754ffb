"""Functions an activity calls about itself, and the ``defn`` decorator that names activities.

Use as a namespace, like ``temporalio.activity``::

    from sessiond_client import activity

    @activity.defn(name="process")
    def process_file(path: str) -> str:
        while not activity.is_cancelled():
            ...
        return activity.info().session.host_name
"""

from sessiond_client._activity import (
    ActivityInfo,
    cancellation_reason,
    defn,
    in_activity,
    info,
    is_cancelled,
    wait_for_cancelled,
)

__all__ = [
    "ActivityInfo",
    "cancellation_reason",
    "defn",
    "in_activity",
    "info",
    "is_cancelled",
    "wait_for_cancelled",
]
