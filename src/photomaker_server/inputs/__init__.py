"""Turning user-supplied inputs (URLs, data URIs, zip archives, image bytes) into safe, decoded photos.

Everything here is torch-free so the API process can validate inputs with the same rules as the worker.
Every refusal is an :class:`~photomaker_server.inputs.errors.InputError` whose message is shown to the user.
"""
