"""A bounded cache of per-photo ID embeddings, keyed by photo content.

A client that sends the same person again (the common case: several prompts for one set of photos) skips the
CLIP vision tower. Keys hash the decoded pixels, so the same photo re-encoded as another file format still hits.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch
from PIL import Image


class IDEmbeddingCache:
    def __init__(self, max_entries: int = 512) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image: Image.Image) -> str:
        image = image.convert("RGB")
        digest = hashlib.sha256(f"{image.size}".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value.detach()
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
