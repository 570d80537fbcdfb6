"""Vision-embedding cache: same image content + same preprocessing → reuse the encoder's output.

Keys hash the decoded RGB pixels (mode, size, bytes) together with every setting that changes the
views (image size, crop, max tiles); values are the float32 embeddings of all views of one image.
Bounded in bytes, least recently used out first. Thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["EmbeddingCache", "image_key"]


def image_key(image, *, image_size: int, crop: bool, max_tiles: int) -> bytes:
    """Content hash of a PIL image plus the preprocessing settings."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|{image_size}|{int(crop)}|{max_tiles}|".encode())
    h.update(image.tobytes())
    return h.digest()


class EmbeddingCache:
    def __init__(self, max_bytes: int = 256 * 1024 * 1024):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            v = self._items.get(key)
            if v is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: bytes, value: np.ndarray) -> None:
        size = value.nbytes
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        value.setflags(write=False)  # shared between requests: never mutated
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, ev = self._items.popitem(last=False)
                self.bytes -= ev.nbytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
