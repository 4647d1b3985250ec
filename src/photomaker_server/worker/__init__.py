"""The GPU worker process: claims jobs from the job database, runs the engine, stores the outputs.

``main`` (the process's entry points), ``process`` (the worker's loop and one job's story), ``feed`` (where the next
job comes from: claimed when the device is free, or claimed and read ahead while it is busy), ``job_inputs`` (a
claimed job's request and decoded inputs), ``finisher`` (storing a finished job's outcome off the device's path),
``job_run`` (a claimed job's logs, lease and stop flags), ``registry`` (what a worker publishes about itself for
``/health``, ``/ready`` and ``/metrics``), ``shutdown`` (signals, the grace period, dying with the parent).
Started by ``photomaker worker`` or by ``photomaker serve``.
"""
