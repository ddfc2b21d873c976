"""A Bloom filter of request digests, sized for the rows it will hold.

The resume journal asks "was an identical request answered before?" for every row; this filter
answers "certainly not" for almost all new requests without a query. It is sized from the number of
rows it will hold — :data:`BITS_PER_ITEM` bits each (rounded up to a power of two), probed at
:data:`HASHES` positions — so it answers "maybe" for under 1% of absent digests at any size
(about 0.6% when full; a fixed 16M-bit, 2-hash filter answers "maybe" for about half the lookups
at 10M rows). 10M rows take 16 MiB.

The digests are already uniform (BLAKE2b, :func:`pipeline.cache.request_digest`), so the positions
are simply four 32-bit slices of a 16-byte digest.

    >>> seen = DigestFilter(capacity=1000)
    >>> seen.add(bytes(range(16)))
    >>> bytes(range(16)) in seen
    True
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

BITS_PER_ITEM = 12
HASHES = 4
MIN_BITS = 1 << 16
MAX_BITS = 1 << 32  # the positions are 32-bit slices of the digest
LOAD_CHUNK = 65536


class DigestFilter:
    """Set membership of 16-byte digests, with rare false positives and no false negatives."""

    def __init__(self, capacity: int) -> None:
        wanted = max(MIN_BITS, capacity * BITS_PER_ITEM)
        self.bits = min(MAX_BITS, 1 << (wanted - 1).bit_length())
        self._mask = self.bits - 1
        self._array = bytearray(self.bits // 8)

    def add(self, digest: bytes) -> None:
        x, m, a = int.from_bytes(digest[:16], "little"), self._mask, self._array
        for p in (x & m, (x >> 32) & m, (x >> 64) & m, (x >> 96) & m):
            a[p >> 3] |= 1 << (p & 7)

    def __contains__(self, digest: bytes) -> bool:
        x, m, a = int.from_bytes(digest[:16], "little"), self._mask, self._array
        p = x & m
        if not a[p >> 3] & (1 << (p & 7)):
            return False  # the common case for a new request: one probe
        return all(a[p >> 3] & (1 << (p & 7)) for p in ((x >> 32) & m, (x >> 64) & m, (x >> 96) & m))

    def add_all(self, digests: Iterable[bytes]) -> None:
        """Add many digests at once (vectorised: a resumed run's millions of journaled rows)."""
        array = np.frombuffer(self._array, dtype=np.uint8)
        chunk: list[bytes] = []
        for digest in digests:
            chunk.append(digest if len(digest) == 16 else digest[:16].ljust(16, b"\0"))  # as add() reads it
            if len(chunk) >= LOAD_CHUNK:
                self._add_chunk(array, chunk)
                chunk = []
        if chunk:
            self._add_chunk(array, chunk)

    def _add_chunk(self, array: np.ndarray, chunk: list[bytes]) -> None:
        words = np.frombuffer(b"".join(chunk), dtype="<u4").reshape(-1, HASHES) & np.uint32(self._mask)
        positions = words.ravel()
        np.bitwise_or.at(array, positions >> 3, (np.uint8(1) << (positions & 7).astype(np.uint8)))
