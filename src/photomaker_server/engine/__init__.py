"""The PhotoMaker model side: checkpoint, ID encoder, pipeline, styles, tiny demo model.

Import submodules directly (``engine.options``, ``engine.service``); this package does not import torch at import
time so that torch-free processes (the API server) can share ``options`` and ``styles``.
"""
