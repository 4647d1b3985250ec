"""Service-wide settings.

Every value can come from a CLI flag, an environment variable (prefix ``PHOTOMAKER_``), or the default here.
The API process and the worker process both build a ``Settings`` from the same environment, so a value set
once by ``photomaker serve`` reaches both sides.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

APP_ID = "fal-ai/photomaker"

#: Hub locations of the real weights. Each can be replaced by a local directory or file.
DEFAULT_BASE_MODELS = {
    "photomaker": "SG161222/RealVisXL_V3.0",
    "photomaker-style": "stabilityai/stable-diffusion-xl-base-1.0",
}
DEFAULT_PHOTOMAKER_CHECKPOINT = "TencentARC/PhotoMaker/photomaker-v1.bin"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHOTOMAKER_", extra="ignore")

    # --- where things live -------------------------------------------------------------------------
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8000
    #: Absolute base of every URL we hand out (status_url, file URLs). Empty: derived from host/port/TLS.
    public_base_url: str = ""
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None

    #: "text" for people, "json" for log collectors (one object per line).
    log_format: str = "text"

    # --- auth ---------------------------------------------------------------------------------------
    #: Accepted API keys (``Authorization: Key <key>``). Empty: a key is generated into the data dir.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- model --------------------------------------------------------------------------------------
    tiny: bool = False
    #: When the real weights cannot be had at start-up, serve the tiny demo model (loudly) instead of failing.
    demo_fallback: bool = True
    base_model: str = DEFAULT_BASE_MODELS["photomaker"]
    style_base_model: str = DEFAULT_BASE_MODELS["photomaker-style"]
    photomaker_checkpoint: str = DEFAULT_PHOTOMAKER_CHECKPOINT
    trigger_word: str = "img"
    device: str = "auto"
    #: How many base pipelines may be resident at once (1: load on demand, evicting the other).
    max_resident_bases: int = 2
    #: GiB of weights the resident base pipelines may take together (0: only max_resident_bases limits).
    memory_budget_gb: float = 0.0
    #: Bound on the ID-embedding cache (photos).
    id_cache_size: int = 512
    max_num_images: int = 4
    max_pixels_out: int = 2048 * 2048

    # --- inputs -------------------------------------------------------------------------------------
    fetch_timeout_s: float = 20.0
    max_download_bytes: int = 64 * 1024 * 1024
    max_data_uri_bytes: int = 32 * 1024 * 1024
    #: Hosts/CIDRs exempt from the SSRF address check (operators with internal file servers).
    fetch_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_archive_entries: int = 200
    max_archive_entry_bytes: int = 32 * 1024 * 1024
    max_archive_total_bytes: int = 256 * 1024 * 1024
    max_archive_ratio: float = 200.0
    max_id_photos: int = 16
    max_image_pixels: int = 40_000_000

    # --- queue --------------------------------------------------------------------------------------
    lease_seconds: float = 30.0
    max_attempts: int = 3
    result_ttl_hours: float = 24.0 * 7
    webhook_max_attempts: int = 10

    # --- shutdown -----------------------------------------------------------------------------------
    #: On SIGTERM/SIGINT a worker gets this long to finish the job in hand; past it the job goes back to the queue
    #: at once (another worker, or this one after a restart, runs it from the start). 60 s covers a 50-step
    #: 1024x1024 SDXL job on a current GPU (roughly 5-20 s) with room for a slow card or a multi-image batch,
    #: and stays well under what orchestrators wait by default once raised by the documented margin.
    shutdown_grace_s: float = Field(default=60.0, ge=0)

    @field_validator("api_keys", "fetch_allow", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @cached_property
    def base_url(self) -> str:
        """The absolute URL prefix clients see."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:  # an IPv6 literal needs brackets in a URL
            host = f"[{host.strip('[]')}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def base_model_for(self, base_pipeline: str) -> str:
        return self.style_base_model if base_pipeline == "photomaker-style" else self.base_model
