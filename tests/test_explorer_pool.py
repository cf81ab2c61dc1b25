"""sdm.explorer.pool: one memory cap over every live session, least recently used freed first, tabs freed on close."""
from __future__ import annotations

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
