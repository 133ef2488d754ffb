"""The blocking API, for programs that are not asyncio programs.

:class:`SyncSessionClient` has the async client's methods and semantics; its sessions
(:class:`SyncSession`) run activities with ``session.execute_activity(fn, *args)`` and block::

    from sessiond_client.sync import SyncSessionClient

    with SyncSessionClient("127.0.0.1:50051") as client:
        with client.create_session("fileprocessing") as session:
            report = session.execute_activity(process, path)
"""

from sessiond_client._sync import SyncSession, SyncSessionClient, SyncSessionContext

__all__ = ["SyncSession", "SyncSessionClient", "SyncSessionContext"]
