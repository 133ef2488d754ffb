"""A caller process that holds many ``WatchSession`` calls open on one session, for kill tests.

    python -m tests.integration.watcher --target 127.0.0.1:PORT --session-id ID --count 2000

prints ``{"event": "watching", "count": N}`` once every watch has read the session's current state,
then waits until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import grpc
from sessiond_client.api.v1 import session_service_pb2, session_service_pb2_grpc


async def _main(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        request = session_service_pb2.WatchSessionRequest(session_id=args.session_id)
        calls = [stub.WatchSession(request) for _ in range(args.count)]
        for call in calls:
            await call.read()
        sys.stdout.write(json.dumps({"event": "watching", "count": len(calls)}) + "\n")
        sys.stdout.flush()
        await asyncio.Event().wait()
    return 0


def main() -> int:
    """Open the watches and hold them until killed."""
    parser = argparse.ArgumentParser(prog="watcher", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--session-id", required=True)
    parser.add_argument("--count", type=int, default=1000)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
