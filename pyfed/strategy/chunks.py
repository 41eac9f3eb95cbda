"""How the aggregation math walks big arrays: in cache-sized chunks."""

from __future__ import annotations

# Elements per chunk when folding: 128 Ki elements (512 KiB-1 MiB) stay in L2/L3 cache, so each
# chunk is read from memory once however many operations touch it, and the scratch is one chunk,
# not one whole layer. (64 Ki measured a few percent slower: more numpy calls per update.)
CHUNK_ELEMENTS = 1 << 17


def windows(size: int):
    """Slices covering ``range(size)`` in steps of ``CHUNK_ELEMENTS``."""
    for start in range(0, size, CHUNK_ELEMENTS):
        yield slice(start, min(start + CHUNK_ELEMENTS, size))
