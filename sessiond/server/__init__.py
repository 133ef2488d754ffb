"""The grpc.aio transport of sessiond: servicers, worker streams and the server factory."""

from sessiond.server.app import SERVICE_NAME, SessiondServer, create_server, serve
from sessiond.server.startup import StartupError

__all__ = ["SERVICE_NAME", "SessiondServer", "StartupError", "create_server", "serve"]
