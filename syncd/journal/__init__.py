"""The journal: one SQLite file per state directory that makes delivery exactly-once.

- ``schema``: the tables and their migrations, opening the file (read-write or read-only),
  and the lock that keeps one daemon per state directory;
- ``store``: ``Store``, the exactly-once transactions (observe, settled, intend, acked, ...);
- ``queries``: ``JournalReader``, the read queries behind the daemon, rescans, ``syncd
  status``, ``syncd once`` and the metrics.

No SQL lives outside this package. The protocol and the schema's story: docs/architecture.md.
"""
