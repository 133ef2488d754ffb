"""Where sessions are made durable: the store boundary (:mod:`.base`), the in-memory store
(:mod:`.memory`, the default, which needs nothing), the ``--store`` setting (:mod:`.spec`), and the
etcd store's client (:mod:`.etcd`, imported only when ``--store etcd://…`` is used).
"""
