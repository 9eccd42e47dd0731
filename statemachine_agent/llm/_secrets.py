"""Keeping the API key out of everything a model server says back.

Servers echo what they are sent: the key they refused, in an error's text, a URL or a header dump,
plain, URL-encoded, or base64-encoded as in a Basic ``user:key`` credential. Whatever the server
says reaches error messages, journals, logs and results, so every text from it goes through a
:class:`Scrubber` before it is kept, cut or shown.
"""

from __future__ import annotations

import base64
import functools
import re
from typing import Any

__all__ = ["MASK", "Scrubber", "scrubber"]

MASK = "<the API key>"
"""What stands where the key was."""

_MIN_ENCODED = 8
"""Keys shorter than this are scrubbed as they are and URL-encoded only: a few base64 characters
would match too much unrelated text."""


def _percent(char: str) -> str:
    """A pattern for ``char`` as it is, percent-encoded (hex digits in either case), or as a JSON escape
    (``\\u0073``, ``\\/``, behind any number of backslashes: an error body is kept as the server sent
    it, and one JSON unescape would give the key back); ``+`` may stand for a space, as in a query string."""
    encoded = "".join(f"%[{b >> 4:X}{(b >> 4):x}][{b & 15:X}{(b & 15):x}]" for b in char.encode())
    alternatives = [re.escape(char), encoded] + (["\\+"] if char == " " else [])
    if ord(char) < 0x10000:
        alternatives.append("\\\\+u" + "".join(f"[{h.upper()}{h.lower()}]" for h in f"{ord(char):04x}"))
    if char == "/":
        alternatives.append("\\\\+/")
    return "(?:" + "|".join(alternatives) + ")"


def _base64_cores(key: bytes) -> list[str]:
    """The base64 characters that depend on the key's bytes alone, at each of the three alignments
    the key can have inside a longer encoded text (``user:key``, ``Bearer key``...), in both the
    standard and the URL-safe alphabets."""
    cores: list[str] = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + key + b"\0\0").decode()
        first = -(-8 * shift // 6)  # the first character with no bit of the prefix
        last = 8 * (shift + len(key)) // 6  # one past the last with no bit of what follows
        core = encoded[first:last]
        for text in (core, core.replace("+", "-").replace("/", "_")):
            if text not in cores:
                cores.append(text)
    return cores


class Scrubber:
    """Replaces the key, URL-encoded (any mix of escaped and plain characters) and base64-encoded
    (alone, or inside a longer encoded credential), with :data:`MASK`."""

    __slots__ = ("_pattern",)

    def __init__(self, key: str) -> None:
        parts = ["".join(_percent(c) for c in key)]
        if len(key) >= _MIN_ENCODED:
            parts.extend(re.escape(core) for core in _base64_cores(key.encode()))
        self._pattern = re.compile("|".join(parts))

    def text(self, text: str) -> str:
        """``text`` without the key in any of its forms."""
        return self._pattern.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """``value`` (parsed JSON) with every string in it, keys included, scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


@functools.lru_cache(maxsize=8)
def scrubber(key: str) -> Scrubber:
    """The scrubber of ``key`` (cached: the key is read at each request, and rarely changes)."""
    return Scrubber(key)
