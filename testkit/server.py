"""A server the tests start as a process of its own (Hadoop's YARN test cluster, Trino): its log, and
stopping it by its process group.  Tooling for tests only; the jobs never import it."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Optional


class ServerProcess:
    """Base of the test-server harnesses: ``proc`` (started by a subclass's ``start``, in a session of its
    own), ``log_path``; a context manager that stops the whole process group on exit."""

    proc: Optional[subprocess.Popen] = None
    log_path: str = ""

    def start(self) -> "ServerProcess":
        """Start the server and wait until it is ready (subclasses)."""
        raise NotImplementedError

    def _log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n: int = 3000) -> str:
        """The end of the server's own log."""
        return self._log()[-n:]

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group (what it started ends with it), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def maven_copy_dependencies(pom: str, what: str, error: type[Exception], *args: str, quiet: bool = True) -> None:
    """``mvn dependency:copy-dependencies`` of ``pom`` (the pinned artifacts into ``target/dependency``).

    Raises:
        error: Maven is missing (what to install) or could not fetch ``what`` (its output's end).
    """
    import shutil

    if shutil.which("mvn") is None:
        raise error(f"Maven (mvn) is needed to fetch {what}: install maven (Debian/Ubuntu: apt-get install maven)")
    cmd = ["mvn", "-B", "-f", pom, "dependency:copy-dependencies", *args] + (["-q"] if quiet else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise error(f"mvn could not fetch {what}:\n" + (r.stdout + r.stderr)[-3000:])
