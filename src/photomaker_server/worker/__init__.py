"""The GPU worker process: claims jobs from the job database, runs the engine, stores the outputs.

``process`` (the worker's loop and one job's story), ``job_run`` (a claimed job's logs, lease and stop flags),
``registry`` (what a worker publishes about itself for ``/health``, ``/ready`` and ``/metrics``), ``shutdown``
(signals, the grace period, dying with the parent). Started by ``photomaker worker`` or by ``photomaker serve``.
"""
