"""Generated gRPC stubs for the part of etcd's v3 API sessiond uses. Do not edit: run scripts/gen_protos.py."""
