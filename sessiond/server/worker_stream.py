"""The WorkerHeartbeat stream: register, then read worker messages while writing server ones.

Written as an async generator (OpenTelemetry's aio interceptor breaks read()/write()-style
stream handlers, upstream #3066). A reader task consumes the worker's messages; the generator
yields what the engine queued for this connection. When either side ends, the worker is
disconnected, and its open sessions fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from sessiond_client.api.v1 import session_pb2, worker_pb2

from sessiond.core.errors import InvalidArgumentError, MalformedRequestError, OwnerUnavailableError
from sessiond.core.model import SessionRecord, SessionState, WorkerRegistration
from sessiond.server import auth, validate
from sessiond.server.convert import record_parts
from sessiond.server.engine import Engine
from sessiond.server.worker_connection import WorkerConnection

log = logging.getLogger("sessiond.worker_stream")


def registration(message: worker_pb2.RegisterWorker, default_host: str, principal: str = "") -> WorkerRegistration:
    """Validate a RegisterWorker message (from a worker authenticated as ``principal``)."""
    return WorkerRegistration(
        task_queue=validate.name(message.task_queue, "register.task_queue", required=True),
        worker_id=validate.name(message.worker_id, "register.worker_id", required=False) or str(uuid.uuid4()),
        identity=validate.name(message.identity, "register.identity", required=False),
        host_name=validate.name(message.host_name, "register.host_name", required=False) or default_host,
        capacity=validate.capacities(message.capacities, message.max_concurrent_sessions),
        instance_id=validate.name(message.instance_id, "register.instance_id", required=False),
        principal=principal,
        labels=validate.labels(message.labels),
    )


def held_records(engine: Engine, message: worker_pb2.RegisterWorker, principal: str = "") -> list[SessionRecord]:
    """The sessions a registering worker (authenticated as ``principal``) reports it still holds, as
    records the core can adopt.

    A malformed report is skipped (logged): the worker does not get it back, and the rest of the
    registration stands. With ``engine.verify_reports``, so is a report whose record does not carry
    this server's signature for this worker (its worker_id and principal): a worker cannot make up a
    session, claim one for another principal or owner, or take over another worker's.
    """
    records = []
    refused: list[str] = []
    for index, session in enumerate(message.held_sessions):
        try:
            field = f"register.held_sessions[{index}]"
            if engine.verify_reports and not _signed_for(engine, session, message.worker_id, principal):
                raise InvalidArgumentError(f"{field}.record_signature",
                                           "is not this server's signature of the session for this worker")
            records.append(_record(engine, session, message.task_queue, field))
        except InvalidArgumentError as exc:
            refused.append(exc.message)
    if refused:
        # One line per registration, however many reports were bad.
        log.warning("worker %s reported %d sessions it cannot get back (first: %s)", message.worker_id,
                    len(refused), refused[0])
    return records


def _signed_for(engine: Engine, session: session_pb2.Session, worker_id: str, principal: str) -> bool:
    """The report carries this server's signature of the session, held by this worker_id of this principal."""
    return session.worker.worker_id == worker_id and engine.signer.record_valid(
        record_parts(session, principal), session.record_signature, engine.now())


def _record(engine: Engine, session: session_pb2.Session, task_queue: str, field: str) -> SessionRecord:
    session_id = validate.name(session.session_id, f"{field}.session_id", required=True)
    if session.task_queue != task_queue:
        raise InvalidArgumentError(f"{field}.task_queue", "is not the task queue of this registration")
    if session.state != int(SessionState.OPEN):
        raise InvalidArgumentError(f"{field}.state", "only OPEN sessions can be held")
    options = validate.options(session.options, session.HasField("options"), engine.config)
    clock, now = engine.clock, engine.now()
    placed_at = clock.monotonic(session.create_time) if session.HasField("create_time") else now
    expire_at = clock.monotonic(session.expire_time) if session.HasField("expire_time") \
        else placed_at + options.execution_timeout
    # What it holds: the granted vector it was given (an older record: what its options asked for).
    held = session.resources or session.options.resources
    return SessionRecord(
        session_id=session_id, task_queue=task_queue, options=options,
        owner=validate.name(session.owner, f"{field}.owner", required=False),
        request_id=validate.name(session.request_id, f"{field}.request_id", required=False),
        recreated=session.recreated, placed_at=placed_at, expire_at=expire_at,
        principal=validate.name(session.principal, f"{field}.principal", required=False),
        demand=validate.demand(held, f"{field}.resources"),
        selector=validate.selector(session.options.selector, f"{field}.options.selector"),
    )


async def serve_worker(engine: Engine, requests: AsyncIterator[worker_pb2.WorkerHeartbeatRequest],
                       default_host: str) -> AsyncIterator[worker_pb2.WorkerHeartbeatResponse]:
    """Run one worker stream; yields the messages to send to the worker.

    An undecodable first message raises MalformedRequestError (from the request iterator) before
    anything is registered; one after register ends the stream with that status, never with OK.
    """
    first = await anext(aiter(requests), None)
    if first is None:
        return
    if first.WhichOneof("message") != "register":
        raise InvalidArgumentError("register", "the first message on the stream must be register")
    principal = auth.current().name  # authenticated by the guard before the stream's first byte was read
    reg = registration(first.register, default_host, principal)
    held = held_records(engine, first.register, principal)
    if engine.cluster is not None:
        # A replica owns the worker before it registers: claimed in the store (fenced), and the
        # sessions recorded on it adopted when the worker still holds them (SPEC §6.5).
        held = await engine.cluster.ownership.take_over(reg, held)
    conn = engine.connect_worker(reg, held, adopt_held=engine.cluster is not None)
    if engine.cluster is not None and not engine.cluster.ownership.owns(reg):
        # Another replica took the worker over between the claim and now (review i12b, 7): the
        # stream must not stay here, where every placement would be refused. The worker moves.
        engine.drop_worker(conn.key, "another replica took it over while it registered here")
        engine.disconnect_worker(conn)
        raise OwnerUnavailableError(f"worker {reg.worker_id!r} was taken over by another replica while it "
                                    "registered here; register again")
    first = None  # not kept for the life of the stream (its protobuf arena is per-worker memory)
    reader = asyncio.create_task(_read(engine, conn, requests))
    try:
        while (message := await conn.next()) is not None:
            yield message
            if conn.backlogged:
                engine.worker_drained(conn)
        if reader.done() and (malformed := reader.result()) is not None:
            raise malformed
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        engine.disconnect_worker(conn)


async def _read(engine: Engine, conn: WorkerConnection,
                requests: AsyncIterator[worker_pb2.WorkerHeartbeatRequest]) -> MalformedRequestError | None:
    """Hand the worker's messages to the engine; returns the error if one could not be decoded."""
    try:
        async for request in requests:
            try:
                handled = engine.worker_message(conn, request)
            except Exception:
                # Our fault, not the worker's: say so loudly, and end this stream (its sessions fail).
                log.exception("error handling a message from worker %s; closing its stream", conn.key.worker_id)
                break
            if not handled:
                log.info("fenced a stale connection of worker %s", conn.key.worker_id)
                break
    except asyncio.CancelledError:
        raise
    except MalformedRequestError as malformed:  # the worker's fault: its stream ends with this status
        return malformed
    except Exception as exc:
        # The worker's side of the stream broke (killed, cancelled, network): routine.
        log.debug("worker %s stream ended: %r", conn.key.worker_id, exc)
    finally:
        conn.close()
    return None
