"""The durable request queue and everything that hangs off it.

``store`` keeps requests, their logs and the webhook outbox in one database (SQLite in WAL mode today) that the
API process and the worker process open side by side; it is the only thing they share besides file storage.
``webhooks`` signs and delivers fal-compatible completion webhooks from that outbox.
"""
