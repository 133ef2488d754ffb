"""Generated gRPC stubs for the sessiond.v1 contract. Do not edit: run scripts/gen_protos.py."""
