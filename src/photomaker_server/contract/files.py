"""``FileRef``: how the job database names a file — a storage key of this service, or a URL somewhere else.

A request names its files by URL, and some of those URLs are this service's own storage (an upload, a data URI the
API stored). Kept as URLs, whoever reads the request later has to recognise our own URLs again (a public base URL,
a CDN, presigning: all of which may have changed meanwhile). So the API decides once, at submit, and stores the
decision: ``{"key": "<token>/<name>"}`` for a file in our storage (read straight from storage), or
``{"url": "https://…"}`` for anything else (fetched, with the SSRF checks). Output images use the same type: a
stored image by key (its URL is rendered when it is handed out), a ``sync_mode`` image as its ``data:`` URI.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FileRef"]

_URL_SCHEMES = ("http:", "https:", "data:")


class FileRef(BaseModel):
    """Exactly one of ``key`` (a storage key of this service) or ``url`` (an http(s) URL elsewhere, or a ``data:``
    URI). Serialised without the absent one: ``{"key": "…"}`` or ``{"url": "…"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(None, min_length=1, description="A key of this service's file storage.")
    url: str | None = Field(None, min_length=1, description="An http(s) URL elsewhere, or a data: URI.")

    @model_validator(mode="after")
    def _exactly_one(self) -> FileRef:
        if (self.key is None) == (self.url is None):
            raise ValueError("a file reference holds exactly one of 'key' or 'url'")
        if self.url is not None and not self.url[:6].lower().startswith(_URL_SCHEMES):
            raise ValueError("a file reference's url must be http(s) or a data: URI")
        return self

    @classmethod
    def stored(cls, key: str) -> FileRef:
        return cls(key=key)

    @classmethod
    def outside(cls, url: str) -> FileRef:
        return cls(url=url)

    @property
    def is_data_uri(self) -> bool:
        return self.url is not None and self.url[:5].lower() == "data:"

    def identity(self) -> str:
        """What makes two references the same input: the key, or the URL without its fragment."""
        return f"stored:{self.key}" if self.key is not None else f"url:{(self.url or '').strip().split('#', 1)[0]}"

    def label(self) -> str:
        """For log lines and messages: the URL (a data URI shortened), or where in our storage."""
        if self.key is not None:
            return f"stored file {self.key}"
        url = self.url or ""
        return url if not self.is_data_uri else url[:40] + "…"
