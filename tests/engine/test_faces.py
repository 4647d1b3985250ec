"""Face analysis for v2: the reference procedure on InsightFace, and the tiny face pack's behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from photomaker_server.engine.faces import DETECTION_SIZES, FaceAnalyzer

from helpers import make_face


@pytest.fixture(scope="module")
def analyzer(tiny_locations):
    return FaceAnalyzer(str(tiny_locations["face_model"]))


@pytest.mark.parametrize("seed,size", [(0, (256, 320)), (1, (640, 480)), (2, (1024, 1024)), (3, (97, 131))])
def test_the_tiny_pack_finds_a_face_in_portraits(analyzer, seed, size):
    embedding = analyzer.embedding(make_face(seed, size))
    assert embedding is not None and embedding.shape == (512,) and np.isfinite(embedding).all()


@pytest.mark.parametrize("size,colour", [((256, 256), (128, 128, 128)), ((300, 200), (230, 180, 150)),
                                         ((120, 500), (0, 0, 0)), ((640, 640), (255, 255, 255))])
def test_a_uniform_image_has_no_face(analyzer, size, colour):
    assert analyzer.embedding(Image.new("RGB", size, colour)) is None


def test_embeddings_are_insightfaces_raw_ones(analyzer, tiny_locations):
    """Equal to FaceAnalysis.get(...)[0].embedding (raw, not normed) on the same pack, photo by photo."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(tiny_locations["face_model"]), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    photos = [make_face(i) for i in range(4)]
    for photo in photos:
        faces = app.get(np.ascontiguousarray(np.asarray(photo)[:, :, ::-1]))
        ours = analyzer.embedding(photo)
        assert np.array_equal(ours, faces[0].embedding)
        assert abs(np.linalg.norm(ours) - 1.0) > 0.1, "the raw embedding, not normed_embedding"
    embeddings = [analyzer.embedding(p) for p in photos]
    assert not np.array_equal(embeddings[0], embeddings[1]), "different photos, different embeddings"


def test_detection_retries_smaller_sizes_and_starts_each_photo_at_640(tiny_locations):
    analyzer = FaceAnalyzer(str(tiny_locations["face_model"]))
    detector = analyzer._app.det_model
    tried: list[int] = []
    real = detector.detect

    def recording(img, input_size=None, **kw):
        tried.append(input_size[0])
        return real(img, input_size=input_size, **kw)

    detector.detect = recording
    assert analyzer.embedding(Image.new("RGB", (200, 200), (90, 90, 90))) is None
    assert tried == list(DETECTION_SIZES) == [640, 576, 512, 448, 384, 320, 256]
    tried.clear()
    assert analyzer.embedding(make_face(7)) is not None
    assert tried == [640], "a new photo starts again at 640"


def test_results_are_cached_per_photo(tiny_locations):
    from photomaker_server.engine.id_cache import IDEmbeddingCache

    cache = IDEmbeddingCache(16)
    analyzer = FaceAnalyzer(str(tiny_locations["face_model"]), cache=cache)
    blank = Image.new("RGB", (64, 64), (1, 2, 3))
    for _ in range(2):
        assert analyzer.embedding(blank) is None
        assert analyzer.embedding(make_face(1)) is not None
    assert cache.hits == 2 and cache.misses == 2


def test_a_missing_face_model_directory_is_a_clear_error(tmp_path):
    from photomaker_server.engine.errors import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="face model directory .* does not exist"):
        FaceAnalyzer(str(tmp_path / "nope"))
