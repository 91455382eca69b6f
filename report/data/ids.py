"""Image ids: usable as file names and npz keys, unique within a source."""

from __future__ import annotations

import re


def safe_id(text: str) -> str:
    """An id usable as a file name and an npz key: no path separators, no dot-dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("._")
    return cleaned or "image"


def unique_id(image_id: str, seen: set[str]) -> str:
    # Compared case-insensitively: ids become file names, and some file systems fold case.
    candidate, n = image_id, 1
    while candidate.lower() in seen:
        n += 1
        candidate = f"{image_id}-{n}"
    seen.add(candidate.lower())
    return candidate
