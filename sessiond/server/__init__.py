"""The grpc.aio transport of sessiond: servicers, worker streams and the server factory."""

from sessiond.server.app import SERVICE_NAME, SessiondServer, create_server, serve

__all__ = ["SERVICE_NAME", "SessiondServer", "create_server", "serve"]
