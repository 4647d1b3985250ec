"""The 11 style templates of fal's endpoint (data in ``data/styles.json``).

A style wraps the user's prompt in a template and adds a negative text, exactly as the reference demo does:
``negative = style_negative + " " + user_negative``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Style:
    name: str
    reference_name: str
    prompt: str
    negative_prompt: str

    def apply(self, prompt: str, negative_prompt: str = "") -> tuple[str, str]:
        return self.prompt.replace("{prompt}", prompt), f"{self.negative_prompt} {negative_prompt}"


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Style], str]:
    raw = json.loads(resources.files(__package__).joinpath("data/styles.json").read_text(encoding="utf-8"))
    styles = {entry["name"]: Style(**entry) for entry in raw["styles"]}
    return styles, raw["default"]


def style_names() -> list[str]:
    return list(_load()[0])


def default_style() -> str:
    return _load()[1]


def get_style(name: str) -> Style:
    styles = _load()[0]
    try:
        return styles[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r}; choose one of: {', '.join(styles)}") from None
