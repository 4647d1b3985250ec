"""Route groups: queue (fal's queue protocol and sync run), files (fal's storage flows), ops (health, metrics), web."""
