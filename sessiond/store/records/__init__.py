"""Generated stubs for the records the etcd store keeps (internal to replicas). Do not edit: run scripts/gen_protos.py."""
