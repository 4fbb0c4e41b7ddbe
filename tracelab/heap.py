"""Keep freed memory for reuse during a hot loop, instead of page-faulting fresh memory each time.

    >>> with reuse_heap():                     # around thousands of batched layer calls
    ...     scores = engine.run(cells)

glibc's malloc serves every block above its mmap threshold (128 KiB to 32 MiB) with fresh
pages from the kernel and hands them back on free, so a CPU forward pass whose temporaries are
tens of MB touches every page anew: one minor page fault per 4 KiB, about 12,800 faults and half
the time of one MLP call on a [4500, 576] batch of the embedded model (measured here). Inside
`reuse_heap()`, large blocks come from the heap and stay there after free (mallopt M_MMAP_MAX=0,
M_TRIM_THRESHOLD=1 GiB), so the next call reuses warm pages. On exit the defaults come back and
the unused heap top is returned to the system (malloc_trim). A no-op off glibc; nestable.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from typing import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_lock = threading.Lock()
_depth = 0


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


@contextlib.contextmanager
def reuse_heap() -> Iterator[bool]:
    """Inside, freed large blocks stay in the heap for reuse; yields whether glibc allowed it."""
    global _depth
    with _lock:
        _depth += 1
        ok = _LIBC is not None and (_depth > 1 or (_LIBC.mallopt(_M_MMAP_MAX, 0) == 1
                                                   and _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1))
    try:
        yield ok
    finally:
        with _lock:
            _depth -= 1
            if _LIBC is not None and _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
                _LIBC.malloc_trim(0)
