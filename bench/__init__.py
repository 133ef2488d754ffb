"""sessiond benchmark suite: every figure is a ratio to an empty grpc.aio echo service measured in the same run.

Run it with ``make bench`` (``python -m bench``), or ``python -m bench --smoke`` for the seconds-long CI mode.
The orchestrator (:mod:`bench.runner`) never imports grpc: servers, workers and load generators are
separate processes started with ``sys.executable`` (never a fork after grpc has been initialised).
"""
