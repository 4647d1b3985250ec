"""The HTTP layer: routes and schemas only. It enqueues work in the job store and reads results back; it never
imports torch or the engine's model code."""
