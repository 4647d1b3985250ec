"""Labels the service shows (torch-free, so the API can show them): the one every output of the tiny random-weight
model carries, and the licence notice of InsightFace's models that PhotoMaker v2 uses."""

DEMO_WARNING = (
    "random-weight demo model: this server runs a tiny PhotoMaker with random weights, for tests and offline demos. "
    "Its images are coloured noise and resemble no one. Real results need the real weights (see README)."
)

INSIGHTFACE_LICENSE_NOTICE = (
    "PhotoMaker v2 uses InsightFace face models (buffalo_l by default), which are licensed for non-commercial "
    "research only (https://github.com/deepinsight/insightface#license); this project's own code stays under its "
    "licence."
)
TINY_FACE_PACK = "tiny demo face pack (detects image contrast, not faces; its embeddings identify no one)"
