"""The durable request queue and everything that hangs off it.

``records`` (the vocabulary), ``protocol`` (the :class:`JobStore` interface every consumer is typed against),
``factory.open_job_store`` (URL → store), ``sql/`` (the implementation on SQLite or PostgreSQL) and
``migrations/`` (its Alembic schema history). The store keeps requests, their logs, the webhook outbox, the worker
registry and cluster secrets in one database that API replicas and workers open side by side; it is the only
thing they share besides file storage. ``webhooks`` signs and delivers fal-compatible completion webhooks from
that outbox.
"""
