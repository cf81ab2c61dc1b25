"""Every live session of a server, under one memory cap: the least recently used sessions are freed (with a message
for their owner) when the recordings of all sessions together would exceed it, a session is freed at once when its
browser tab closes, and the freed memory is handed back to the operating system.

One ``SessionPool`` belongs to one app (``app.Explorer`` owns it); nothing here is module-global.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from .heap import release_memory
from .session import Session

__all__ = ["MAX_TOTAL_BYTES", "SessionPool", "release_memory"]

MAX_TOTAL_BYTES = 1024 * 2 ** 20    # recorded data of all sessions together
EVICTED = ("your trajectory was freed to make room for other users (this server keeps at most {mb} MB of "
           "recordings): press “New trajectory” to start again")

class SessionPool:
    """The live sessions by owner (a browser tab's session hash), least recently used first.

    Args:
        max_bytes: cap on the recorded data of all sessions together.
    """

    def __init__(self, max_bytes: int = MAX_TOTAL_BYTES):
        self.max_bytes = int(max_bytes)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def nbytes(self) -> int:
        """Recorded bytes of all live sessions."""
        with self._lock:
            sessions = list(self._sessions.values())
        return sum(s.nbytes() for s in sessions)

    def touch(self, owner: str, sess: Session) -> None:
        """``sess`` (of ``owner``) was just used: mark it most recent, then free the least recent other sessions
        until all of them together fit under the cap."""
        with self._lock:
            old = self._sessions.get(owner)
            self._sessions[owner] = sess
            self._sessions.move_to_end(owner)
            if old is not None and old is not sess:
                victims = [old]
            else:
                victims = []
            total = sum(s.nbytes() for s in self._sessions.values())
            for key in list(self._sessions):
                if total <= self.max_bytes or key == owner:
                    break
                victim = self._sessions.pop(key)
                total -= victim.nbytes()
                victims.append(victim)
        if victims:
            msg = EVICTED.format(mb=self.max_bytes // 2 ** 20)
            for v in victims:
                v.close(reason=msg if v is not old else None)
            release_memory()

    def release(self, owner: str) -> bool:
        """The owner's tab closed: free its session now. Returns whether there was one."""
        with self._lock:
            sess = self._sessions.pop(owner, None)
        if sess is None:
            return False
        sess.close()
        release_memory()
        return True

    def close_all(self) -> None:
        """Free every session and its files (server shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()
        release_memory()
