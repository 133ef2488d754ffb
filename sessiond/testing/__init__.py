"""Test kits: things a test suite, a benchmark or a demo starts around sessiond (not used by the server).

* :mod:`sessiond.testing.etcd_cluster` — a local multi-member etcd cluster on free ports, with the
  faults a replicated deployment must survive (kill -9, SIGSTOP/SIGCONT, restart on the same data).
"""
