"""The launched-app harness, on a stand-in app.py (a plain HTTP server, up in a fraction of a second): the server gets
its port and environment, answers, is measured from /proc, and is gone, with its port free, after the block, also
when the block raises."""
from __future__ import annotations

import json
import signal
import socket
from urllib.request import urlopen

import pytest

from harness import free_port, launch_app

STAND_IN = """
import http.server, json, os, signal, sys
if os.environ.get("EXIT_AT_ONCE"):
    sys.exit(3)
if os.environ.get("IGNORE_SIGTERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        keys = ("SDM_CHECKPOINTS", "SDM_RUN_BUDGET_S", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT")
        body = json.dumps({k: os.environ.get(k) for k in keys}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
address = (os.environ["GRADIO_SERVER_NAME"], int(os.environ["GRADIO_SERVER_PORT"]))
http.server.HTTPServer(address, Echo).serve_forever()
"""


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "app.py").write_text(STAND_IN)
    return tmp_path


def port_is_free(port: int) -> bool:
    """Free for a new server: nothing listens on it (SO_REUSEADDR, as servers set, passes over closed connections)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_server_gets_its_environment_and_is_measured(repo):
    with launch_app(repo / "ckpts", repo=repo, timeout=30, SDM_RUN_BUDGET_S="7") as app:
        with urlopen(app.url) as r:
            seen = json.loads(r.read())
        assert seen == {"SDM_CHECKPOINTS": str(repo / "ckpts"), "SDM_RUN_BUDGET_S": "7",
                        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": app.url.rsplit(":", 1)[1][:-1]}
        assert app.pid == app.proc.pid and app.cpu_seconds() >= 0
        assert 1 < app.rss_mb() < 1000 and app.threads() >= 1
        with pytest.raises(KeyError, match="NoSuchField"):
            app.proc_status("NoSuchField")


def test_an_exception_in_the_block_stops_the_server_and_frees_its_port(repo):
    port = free_port()
    with pytest.raises(KeyboardInterrupt):
        with launch_app(repo=repo, port=port, timeout=30) as app:
            assert not port_is_free(port)
            raise KeyboardInterrupt
    assert app.proc.returncode == -signal.SIGTERM
    assert port_is_free(port)


def test_a_server_that_ignores_sigterm_is_killed(repo):
    with launch_app(repo=repo, timeout=30, IGNORE_SIGTERM="1") as app:
        app.stop(grace=0.5)
        assert app.proc.returncode == -signal.SIGKILL


def test_an_app_that_exits_before_serving_is_an_error_that_says_so(repo):
    with pytest.raises(RuntimeError, match="exited with code 3 before serving"):
        with launch_app(repo=repo, timeout=30, EXIT_AT_ONCE="1"):
            pass
