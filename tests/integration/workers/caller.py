"""A caller process for the caller-liveness tests: opens one session and then just holds it.

Run as ``python tests/integration/workers/caller.py --target HOST:PORT --task-queue Q --caller-timeout S``.
Prints ``{"event": "open", "session_id": ...}`` once the session is open, then waits until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from sessiond_client import SessionClient


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--caller-timeout", type=float, default=60.0)
    args = parser.parse_args()
    async with await SessionClient.connect(args.target) as client:
        async with client.create_session(args.task_queue, creation_timeout=10,
                                         caller_timeout=args.caller_timeout) as session:
            print(json.dumps({"event": "open", "session_id": session.id}), flush=True)
            await asyncio.Event().wait()  # until SIGKILL
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
