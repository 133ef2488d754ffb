"""Test kit: run your activities and callers in your own tests.

* :class:`SessiondEnvironment` starts a real sessiond server in-process (on a free port) with
  :class:`~sessiond_client.SessionWorker`\\ s for your activities, and hands you a connected
  :class:`~sessiond_client.SessionClient`. It needs the server package: ``pip install
  'sessiond-client[testing]'`` (it says so when it is missing).
* :class:`ActivityEnvironment` runs one activity function with a fake activity context, no server:
  it records ``activity.heartbeat()`` calls and can cancel the activity.

A pytest fixture (pytest-asyncio), for example in ``conftest.py``::

    import pytest_asyncio
    from sessiond_client.testing import SessiondEnvironment

    @pytest_asyncio.fixture
    async def env():
        async with SessiondEnvironment.start(activities=[download, process]) as env:
            yield env

    async def test_pipeline(env):
        async with env.client.create_session(env.task_queue) as session:
            assert await session.execute_activity(download, "http://x") == "/tmp/x"
"""

from sessiond_client.testing._activity_environment import ActivityEnvironment
from sessiond_client.testing._environment import SessiondEnvironment

__all__ = ["ActivityEnvironment", "SessiondEnvironment"]
