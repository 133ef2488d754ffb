"""``make demo-cluster``: replicas on etcd surviving the death of the replica that owns a worker."""
