"""sessiond: worker sessions as a gRPC service.

Layout: ``sessiond.core`` is the pure session table (no I/O, time as an argument);
``sessiond.server`` is the grpc.aio transport around it; ``sessiond.cli`` runs it.
"""

__version__ = "0.1.0"
