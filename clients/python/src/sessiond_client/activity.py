"""Functions an activity calls about itself, and the ``defn`` decorator that names activities.

Use as a namespace, like ``temporalio.activity``::

    from sessiond_client import activity

    @activity.defn(name="process")
    def process_file(path: str) -> str:
        for done, chunk in enumerate(chunks(path)):
            if activity.is_cancelled():
                break
            activity.heartbeat(done)     # progress, and proof of life
        return activity.info().session.host_name
"""

from sessiond_client._activity import (
    ActivityInfo,
    cancellation_reason,
    defn,
    heartbeat,
    in_activity,
    info,
    is_cancelled,
    wait_for_cancelled,
)

__all__ = [
    "ActivityInfo",
    "cancellation_reason",
    "defn",
    "heartbeat",
    "in_activity",
    "info",
    "is_cancelled",
    "wait_for_cancelled",
]
