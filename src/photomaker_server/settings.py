"""Service-wide settings.

Every value can come from a CLI flag, an environment variable (prefix ``PHOTOMAKER_``), or the default here.
The API process and the worker process both build a ``Settings`` from the same environment, so a value set
once by ``photomaker serve`` reaches both sides.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

APP_ID = "fal-ai/photomaker"
#: The generated API key's copy in a data dir, for the CLI and the web page on that machine.
LOCAL_KEY_FILE = "api-key"

#: Hub locations of the real weights. Each can be replaced by a local directory or file.
DEFAULT_BASE_MODELS = {
    "photomaker": "SG161222/RealVisXL_V3.0",
    "photomaker-style": "stabilityai/stable-diffusion-xl-base-1.0",
}
DEFAULT_PHOTOMAKER_CHECKPOINT = "TencentARC/PhotoMaker/photomaker-v1.bin"
DEFAULT_PHOTOMAKER_V2_CHECKPOINT = "TencentARC/PhotoMaker-V2/photomaker-v2.bin"
PHOTOMAKER_VERSIONS = ("v1", "v2")


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
    # --- the shared substrate (the same on every API replica and worker) -----------------------------
    #: SQLAlchemy URL of the job database. Empty: the SQLite file ``jobs.db`` in the data dir (one machine).
    #: ``postgresql://user:pass@host/db`` (psycopg 3) for API replicas and workers on several machines.
    database_url: str = ""
    #: Where uploads and generated images live. Empty: ``files/`` in the data dir (one machine); a directory or
    #: ``file:///dir``; ``s3://bucket/prefix`` for any S3-compatible store (endpoint and credentials: the standard
    #: ``AWS_*`` variables and config chain).
    storage_url: str = ""
    #: Public or CDN base URL of the bucket: file URLs point there instead of at the API's ``/files/`` route.
    storage_public_url: str = ""
    #: Hand out presigned URLs of the bucket valid this long (seconds) instead of the API's ``/files/`` route.
    storage_presign_seconds: int = 0
    #: Secrets every process must agree on. Unset: created once in the job database (see shared_secrets.py).
    upload_secret: SecretStr | None = None
    token_secret: SecretStr | None = None
    #: Ed25519 private key (PEM text) that signs webhooks.
    webhook_signing_key: SecretStr | None = None

    #: API processes of ``serve --no-worker`` sharing the port (``--api-processes``); each its own interpreter.
    api_processes: int = Field(1, ge=1, le=256)

    #: "text" for people, "json" for log collectors (one object per line).
    log_format: str = "text"
    #: Access-log the probes (``/health``, ``/ready``) too; off by default: a load balancer polls them every few
    #: seconds, and their answers are in ``/metrics`` and the database's own log lines.
    log_probes: bool = False

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
    photomaker_v2_checkpoint: str = DEFAULT_PHOTOMAKER_V2_CHECKPOINT
    #: Directory of an InsightFace model pack's .onnx files for v2 (empty: the buffalo_l pack InsightFace downloads).
    face_model: str = ""
    #: ``photomaker_version`` of requests that do not name one ("v1": fal's behaviour).
    default_version: Literal["v1", "v2"] = "v1"
    #: Serve PhotoMaker v2 at all (its face models are licensed for non-commercial research only).
    enable_v2: bool = True
    trigger_word: str = "img"
    device: str = "auto"
    #: How many base pipelines of one PhotoMaker version may be resident at once (1: load on demand, evicting).
    max_resident_bases: int = 2
    #: GiB of weights the resident base pipelines may take together (0: only max_resident_bases limits).
    memory_budget_gb: float = 0.0
    #: Bound on the ID-embedding cache (photos).
    id_cache_size: int = 512
    max_num_images: int = 4
    max_pixels_out: int = 2048 * 2048

    # --- inputs -------------------------------------------------------------------------------------
    #: Largest request body the API reads (413 above it, before the body is read in full). Sized for a JSON
    #: request carrying one maximal data URI (32 MiB decoded is ~43 MiB of base64) plus some smaller ones;
    #: bigger inputs go to storage first and are sent by URL. Upload routes allow max_download_bytes + 1 MiB.
    max_request_bytes: int = 64 * 1024 * 1024
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
    # Per-request budgets: what one request's inputs may cost the worker all together, however they are spread over
    # the archive, ``image_urls`` and the initial image (each distinct file and photo counted once).
    #: Bytes a request's inputs may unpack to: archive entries as they are decompressed, single photos, the initial
    #: image. The default is one maximal archive plus one maximal initial image.
    max_request_input_bytes: int = Field(default=320 * 1024 * 1024, ge=1)
    #: Decoded pixels a request may hold at once in the worker: its kept ID photos, the initial image and the image
    #: being decoded. The default fits every request within the per-photo limits (16 photos scaled to
    #: ``id_photo_pixels`` and one image of ``max_image_pixels``): Pillow keeps 4 bytes a pixel, so ~320 MB.
    max_request_pixels: int = Field(default=80_000_000, ge=1)
    #: ID photos with more pixels are scaled down to about this many as they are decoded (JPEGs by the decoder
    #: itself): the ID encoder sees 224x224 crops, so a 40 MP photo held whole would be waste.
    id_photo_pixels: int = Field(default=2_000_000, ge=50_176)

    # --- per-key budgets (0: no limit) -----------------------------------------------------------------
    #: Bytes and files one key may have stored at once (uploads, data URIs stored at submit, signed-upload URLs
    #: not yet used); they expire with ``result_ttl_hours``. Counted in the job database, so every replica agrees.
    storage_quota_bytes: int = Field(default=10 * 1024**3, ge=0)
    storage_quota_files: int = Field(default=5000, ge=0)
    #: Status streams (SSE) and held ``/run`` calls one key may have open at once, per API process.
    max_streams_per_key: int = Field(default=32, ge=0)
    max_held_runs_per_key: int = Field(default=16, ge=0)
    #: A client polling the status of a running request in a loop gets its next answer when the request changes
    #: (finishes, or logs a line it asked for) or after this many seconds, whichever is first, so it learns of the
    #: end at once instead of up to a poll interval later (``api/held_polls.py``). 0: every poll answered at once.
    status_hold_s: float = Field(default=1.0, ge=0, le=30)

    # --- connections (uvicorn) ----------------------------------------------------------------------
    #: Seconds a client has to send a request's line and headers (from connecting, or from the first byte of the
    #: next request on a kept-alive connection); slow-loris clients are cut off after this.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: A request body gets this many seconds plus one more per ``body_min_rate`` bytes it has sent (Apache's
    #: mod_reqtimeout rule): an upload at 16 KB/s or faster is never cut, a trickled body is cut within seconds.
    body_timeout_s: float = Field(default=20.0, gt=0)
    body_min_rate: int = Field(default=16 * 1024, gt=0)
    #: Seconds an idle kept-alive connection stays open between requests.
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    #: Connections one API process serves at once; past it new requests get a 503 (rather than the process
    #: running out of file descriptors).
    max_connections: int = Field(default=2048, ge=16)

    # --- queue --------------------------------------------------------------------------------------
    #: Deployment-wide cap on queued (waiting) jobs: a submit beyond it gets 503 + Retry-After. 0: no cap.
    max_queued: int = Field(default=0, ge=0)
    #: How long a worker that stopped renewing keeps its job. Not counted while the database is unreachable: no
    #: lease is judged until the database has been reachable for this long again.
    lease_seconds: float = 30.0
    #: While the job database is unreachable, a request that needs it waits this long for it to come back before
    #: it is answered 503 (0: at once). Within fal-client's 120 s timeout, under a reverse proxy's usual 60 s.
    database_wait_s: float = Field(default=45.0, ge=0)
    max_attempts: int = 3
    result_ttl_hours: float = 24.0 * 7
    webhook_max_attempts: int = 10

    #: Jobs a worker claims ahead of the one on its device, reading their inputs meanwhile, so that consecutive
    #: jobs run back to back (0: claim the next job only when the device is free). A prefetched job holds a lease
    #: like any claim; with several workers and a short queue it may wait for a busy worker while another is idle.
    prefetch_depth: int = Field(default=1, ge=0, le=8)

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
    def job_database_url(self) -> str:
        """The job database to open: the configured URL, else the data dir's SQLite file."""
        return self.database_url or f"sqlite:///{self.db_path.expanduser().resolve()}"

    def secret_values(self) -> dict[str, str]:
        """The secrets set in configuration (name → value); unset ones are absent."""
        named = {"upload_secret": self.upload_secret, "token_secret": self.token_secret,
                 "webhook_signing_key": self.webhook_signing_key}
        return {name: value.get_secret_value() for name, value in named.items() if value is not None}

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def base_model_for(self, base_pipeline: str) -> str:
        return self.style_base_model if base_pipeline == "photomaker-style" else self.base_model
