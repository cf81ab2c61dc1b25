"""sdm.explorer.pool: one memory cap over every live session, least recently used freed first, tabs freed on close."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES
from sdm.explorer import ModelRegistry, Session
from sdm.explorer.pool import SessionPool, release_memory


@pytest.fixture(scope="module")
def pipe():
    return ModelRegistry(FIXTURES).get("tiny-sdm")


def started(pipe, steps=3) -> Session:
    s = Session()
    s.start(pipe, "tiny-sdm", num_steps=20)
    s.advance(steps - 1, 1.0)
    return s


def test_the_least_recently_used_sessions_are_freed_over_the_cap(pipe):
    a, b, c = started(pipe), started(pipe), started(pipe)
    one = a.nbytes()
    pool = SessionPool(max_bytes=int(2.5 * one))
    pool.touch("a", a)
    pool.touch("b", b)
    pool.touch("a", a)                 # a is now more recent than b
    pool.touch("c", c)                 # three do not fit: b goes
    assert len(pool) == 2 and b.nbytes() == 0 and a.started and c.started
    with pytest.raises(ValueError, match="freed to make room for other users"):
        b.advance(1, 1.0)
    assert pool.nbytes() == a.nbytes() + c.nbytes() <= pool.max_bytes
    b.start(pipe, "tiny-sdm", num_steps=5)        # its owner starts again: the message is gone
    assert b.started and b.closed_reason is None


def test_the_session_just_used_is_never_evicted_even_alone_over_the_cap(pipe):
    a = started(pipe, steps=5)
    pool = SessionPool(max_bytes=1)
    pool.touch("a", a)
    assert a.started and len(pool) == 1


def test_release_and_close_all(pipe):
    a, b = started(pipe), started(pipe)
    pool = SessionPool()
    pool.touch("a", a)
    pool.touch("b", b)
    assert pool.release("a") and not a.started and a.closed_reason is None
    assert not pool.release("a")
    pool.close_all()
    assert len(pool) == 0 and not b.started


def test_release_memory_runs_malloc_trim_on_linux():
    import sys
    assert release_memory() is sys.platform.startswith("linux")


_PAGE_FAULTS = """
import resource, sys, torch
from sdm.explorer.heap import keep_freed_blocks
if sys.argv[1] == "keep":
    assert keep_freed_blocks()
def call():          # a block past glibc's largest automatic mmap threshold (32 MB), allocated, touched and freed
    block = torch.ones(10_000_000)
for _ in range(3):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    call()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_blocks_lets_a_large_block_reuse_the_pages_of_the_last():
    """What a denoiser worker sets at start. By default glibc maps a 40 MB block afresh at each call and unmaps it when
    freed (about 10,000 new pages a call); kept, the next call reuses the pages. (The batches' smaller blocks faulted
    when glibc trimmed the freed top of its heap, which depends on where its heap lies: random, so not tested.)"""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        return int(out.stdout.split()[-1])
    default, kept = faults("default"), faults("keep")
    assert default > 20 * 5000 and kept < 100, (default, kept)
