"""Where output images and client uploads live, and the URLs they are served at.

``FileStorage`` is the contract (``base``); ``LocalStorage`` keeps files in the data directory (``local``).
An S3-compatible implementation can follow behind the same protocol.
"""

from photomaker_server.storage.base import FileStorage, StoredFile, UploadError, sanitize_file_name
from photomaker_server.storage.local import LocalStorage

__all__ = ["FileStorage", "LocalStorage", "StoredFile", "UploadError", "sanitize_file_name"]
