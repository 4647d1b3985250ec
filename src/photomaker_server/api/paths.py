"""The queue protocol's paths for this server's one app, written out (``/fal-ai/photomaker/...``).

Literal paths, not ``/{owner_ns}/{alias}`` patterns: the router matches them first and in one step, and the API
docs show the URL a client calls. Other app ids get their 404 from catch-all routes after every fixed path
(``routes/queue.py``).
"""

from __future__ import annotations

from ..settings import APP_ID

SUBMIT = f"/{APP_ID}"
REQUEST = f"/{APP_ID}/requests/{{request_id}}"
STATUS = f"{REQUEST}/status"
STATUS_STREAM = f"{STATUS}/stream"
CANCEL = f"{REQUEST}/cancel"
RUN = f"/run/{APP_ID}"
