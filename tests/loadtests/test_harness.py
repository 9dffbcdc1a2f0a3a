"""The load harness's peer processes end whole, children included."""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

from loadtests import harness


def test_a_peer_and_a_child_that_ignores_sigterm_both_end(tmp_path: Path) -> None:
    port = harness.free_port()
    pid_file = tmp_path / "child.pid"
    server = tmp_path / "server.py"
    # A server whose child outlives a terminated parent, as Triton's backend stubs do.
    server.write_text(
        textwrap.dedent(
            f"""
            import http.server, signal, subprocess, sys
            child = subprocess.Popen(
                [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]
            )
            open({str(pid_file)!r}, "w").write(str(child.pid))
            http.server.HTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler).serve_forever()
            """
        )
    )
    with harness.process([sys.executable, str(server)], f"http://127.0.0.1:{port}/"):
        child = int(pid_file.read_text())
        assert _running(child)  # while the peer serves
    assert not _running(child), f"child {child} outlived its peer"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays one until init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_free_ports_lie_outside_the_kernels_ephemeral_range_and_bind() -> None:
    ports = {harness.free_port() for _ in range(20)}
    end = min(harness.PORT_RANGE_END, harness._ephemeral_start())
    assert all(harness.PORT_RANGE_START <= p < end for p in ports), ports
    assert len(ports) > 1  # drawn at random, not the same port each time
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # free when handed out
