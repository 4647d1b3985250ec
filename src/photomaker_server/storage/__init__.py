"""Where output images and client uploads live, and the URLs they are served at.

``FileStorage`` is the contract (``base``); ``LocalStorage`` keeps files in a directory (``local``), ``S3Storage``
in an S3-compatible bucket (``s3``, imported on demand: it needs boto3); ``open_storage`` (``factory``) picks one
from a storage URL. Upload URL signing is shared (``uploads``).
"""

from photomaker_server.storage.base import FileStorage, StorageUnavailable, StoredFile, UploadError, sanitize_file_name
from photomaker_server.storage.factory import open_storage, storage_from_settings
from photomaker_server.storage.local import LocalStorage

__all__ = [
    "FileStorage",
    "LocalStorage",
    "StorageUnavailable",
    "StoredFile",
    "UploadError",
    "open_storage",
    "sanitize_file_name",
    "storage_from_settings",
]
