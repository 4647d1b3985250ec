"""The PhotoMaker model side: checkpoint, ID encoder, pipeline, styles, tiny demo model.

Import submodules directly (``engine.options``, ``engine.service``); this package does not import torch at import
time so that torch-free processes (the API server) can share ``options`` and ``styles``.
"""

import logging


class _QuietPilFallback(logging.Filter):
    """transformers warns that its CLIP processor falls back to PIL when torchvision is absent. We use the PIL
    processor on purpose (it matches the reference's preprocessing; see preprocess.py), so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_QuietPilFallback())
