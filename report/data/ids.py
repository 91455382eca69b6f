"""Image ids: usable as file names and npz keys, unique within a source."""

from __future__ import annotations

import hashlib
import re

# Ids become parts of artifact file names (with a class name and a suffix added), which most
# file systems cap at 255 bytes: a longer id keeps its start and end, readable, with a short
# hash of the whole key between them so that two long keys never give the same id.
MAX_ID_LENGTH = 100
HASH_LENGTH = 10


def safe_id(text: str) -> str:
    """An id usable as a file name and an npz key: ASCII letters, digits, '.', '_' and '-'
    only (no path separators, no dot-dot, no newline), at most MAX_ID_LENGTH characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("._")
    cleaned = cleaned or "image"
    if len(cleaned) <= MAX_ID_LENGTH:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]
    keep = (MAX_ID_LENGTH - HASH_LENGTH - 2) // 2
    return f"{cleaned[:keep]}-{digest}-{cleaned[-keep:]}"


def unique_id(image_id: str, seen: set[str]) -> str:
    # Compared case-insensitively: ids become file names, and some file systems fold case.
    candidate, n = image_id, 1
    while candidate.lower() in seen:
        n += 1
        candidate = f"{image_id}-{n}"
    seen.add(candidate.lower())
    return candidate
