"""Handing freed heap memory back to the operating system.

glibc keeps memory a process freed (its mmap threshold grows after a large block is freed, so later blocks come from
the heap, which shrinks only from its top): after a long recording, hundreds of MB of RSS can be free memory the
process still holds. ``release_memory`` returns it (``malloc_trim``). The session pool calls it when it frees
sessions, and a session after a run of many steps.

``freeze_heap`` (once the app is built) moves everything alive then out of the garbage collector's sight: a full
collection of a built app walked about 495,000 objects (0.25 s holding the GIL: 11% of a busy server's time when 30
tabs closed, and each automatic one as long); after it, only what requests made since.

``keep_freed_blocks`` (in a denoiser worker process, which computes one batch at a time) does the opposite of
``release_memory``. glibc hands freed memory back on its own: a block past its mmap threshold (which adapts, up to
32 MB) is unmapped when freed, and the free top of its heap is trimmed past twice that threshold. A batch's blocks (up
to some 10 MB each) then came back as new pages at every call: a call of 16 images touched about
10,000 of them, 13% of the call (159 -> 139 ms). With blocks up to 64 MB served from the heap and the heap trimmed
only past 512 MB free, a batch reuses the pages of the previous one (0 faults).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

__all__ = ["freeze_heap", "keep_freed_blocks", "release_memory"]

_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    return _libc


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters (malloc.h)


def keep_freed_blocks(mmap_threshold: int = 64 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and trim it only when ``trim_threshold`` bytes at its
    top are free (glibc's ``mallopt``; for a process that computes batch after batch). Returns whether both were set
    (False off glibc: musl and other platforms have no such knobs)."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(_load_libc() or None, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and \
        bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


def release_memory(collect: bool = True) -> bool:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim``; elsewhere only a gc pass).
    ``collect``: run a gc pass first (after freeing sessions: their cycles). Returns whether malloc_trim ran."""
    if collect:
        gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    libc = _load_libc()
    if not libc:
        return False
    libc.malloc_trim(0)
    return True


def freeze_heap(obj=None):
    """Collect once, then freeze every object alive (``gc.freeze``: the app's modules, models and UI, which live as
    long as the process) so that later collections walk only what was made since. Returns ``obj`` (for
    ``demo = freeze_heap(build_demo())``)."""
    gc.collect()
    gc.freeze()
    return obj
