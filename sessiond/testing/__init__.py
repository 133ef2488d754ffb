"""Test kits: things a test suite, a benchmark or a demo starts around sessiond (not used by the server).

* :mod:`sessiond.testing.etcd_cluster` — a local multi-member etcd cluster on free ports, with the
  faults a replicated deployment must survive (kill -9, SIGSTOP/SIGCONT, restart on the same data).
* :mod:`sessiond.testing.ports` — a port that was free a moment ago, and whether a given process
  itself listens on a port (so a server started on such a port is known to be *that* server).
"""
