"""Self-hosted PhotoMaker image service speaking fal's queue protocol."""

__version__ = "0.1.0"
