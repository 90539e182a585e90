"""The event log: one row per inference attempt and per feedback, batched to SQLite or
PostgreSQL with a local spool when the database is down; Prometheus metrics beside it."""
