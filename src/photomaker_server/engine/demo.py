"""The label every output of the tiny random-weight model carries (torch-free, so the API can show it)."""

DEMO_WARNING = (
    "random-weight demo model: this server runs a tiny PhotoMaker with random weights, for tests and offline demos. "
    "Its images are coloured noise and resemble no one. Real results need the real weights (see README)."
)
