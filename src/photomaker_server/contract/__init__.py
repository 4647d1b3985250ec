"""The request and the result, one torch-free definition shared by the API, the worker and the engine.

``request``: what a client may send (validated once at submit; the worker parses the stored request into the same
model). ``result``: what a finished request holds and what clients see of it.
"""
