"""Face embeddings for PhotoMaker v2, with the InsightFace library (as the reference does).

The reference procedure, kept exactly: each photo as BGR; detect; keep the face with the highest detection score;
its **raw** recognition ``embedding`` (not ``normed_embedding``, which changes the images noticeably). Detection
runs at 640×640 and, only when nothing is found, again at 576, 512, ... 256 — and *every* photo starts at 640
again. The size is passed to the detector on each call: InsightFace 2.x ignores the ``det_model.input_size``
attribute that the reference's helper sets (with 0.7.3, that helper also carried the last size over into the next
photo), and without a size its detector runs at several sizes and merges them.

ONNX Runtime runs the models on CUDA when the torch device is a GPU and ``onnxruntime-gpu`` provides it, else on
the CPU. InsightFace's pretrained models are licensed for non-commercial research only
(``demo.INSIGHTFACE_LICENSE_NOTICE``, shown wherever v2 is enabled).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import WeightsUnavailable
from .id_cache import IDEmbeddingCache

log = logging.getLogger(__name__)

#: Detection sizes tried in turn until a face is found (the reference's list, without its repeated 640).
DETECTION_SIZES = (640, 576, 512, 448, 384, 320, 256)
#: InsightFace's own pack, downloaded by InsightFace into ~/.insightface when no --face-model is given.
DEFAULT_PACK = "buffalo_l"
_NO_FACE = torch.empty(0)


class FaceAnalyzer:
    """InsightFace detection + recognition over one model pack, with a per-photo result cache."""

    def __init__(self, location: str = "", device: torch.device | None = None, cache: IDEmbeddingCache | None = None):
        """``location``: a directory holding a pack's ``.onnx`` files, or empty for InsightFace's ``buffalo_l``."""
        try:
            import onnxruntime
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise WeightsUnavailable(
                f"PhotoMaker v2 needs the insightface and onnxruntime packages ({exc}); pip install insightface "
                "onnxruntime opencv-python-headless"
            ) from None
        use_cuda = device is not None and device.type == "cuda" and (
            "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        name = location or DEFAULT_PACK
        if location and not Path(location).expanduser().is_dir():
            raise WeightsUnavailable(f"face model directory {location} does not exist (--face-model: the directory "
                                     "that holds an InsightFace pack's .onnx files, e.g. buffalo_l)")
        try:
            self._app = FaceAnalysis(name=str(Path(name).expanduser()) if location else name,
                                     allowed_modules=["detection", "recognition"], providers=providers)
            self._app.prepare(ctx_id=0 if use_cuda else -1, det_size=(DETECTION_SIZES[0],) * 2)
        except WeightsUnavailable:
            raise
        except Exception as exc:  # download failure, a directory without the two models, unreadable ONNX ...
            raise WeightsUnavailable(f"could not load the InsightFace face models from {name} "
                                     f"({type(exc).__name__}: {exc})") from None
        if "recognition" not in self._app.models:
            raise WeightsUnavailable(f"{name} has no face recognition model (an InsightFace pack such as buffalo_l)")
        self.location = name
        self.providers = providers
        self._cache = cache if cache is not None else IDEmbeddingCache(0)

    def embedding(self, image: Image.Image) -> np.ndarray | None:
        """The raw embedding (float32, 512) of the photo's highest-scoring face, or None when it has none."""
        key = f"face:{self.location}:{self._cache.key(image)}"
        cached = self._cache.get(key)
        if cached is not None:
            return None if cached.numel() == 0 else cached.numpy()
        found = self._analyze(image)
        self._cache.put(key, _NO_FACE if found is None else torch.from_numpy(found))
        return found

    def embeddings(self, images: Sequence[Image.Image]) -> list[np.ndarray | None]:
        return [self.embedding(image) for image in images]

    def _analyze(self, image: Image.Image) -> np.ndarray | None:
        from insightface.app.common import Face

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        detector, recogniser = self._app.det_model, self._app.models["recognition"]
        for size in DETECTION_SIZES:
            boxes, points = detector.detect(bgr, input_size=(size, size), max_num=0)
            if len(boxes):
                # Sorted by score, highest first (what FaceAnalysis.get returns as faces[0]).
                face = Face(bbox=boxes[0, :4], kps=None if points is None else points[0], det_score=boxes[0, 4])
                with warnings.catch_warnings():  # scikit-image's deprecation notice inside InsightFace's alignment
                    warnings.simplefilter("ignore", FutureWarning)
                    recogniser.get(bgr, face)
                return np.asarray(face.embedding, dtype=np.float32)
        return None
