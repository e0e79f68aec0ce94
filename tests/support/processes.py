"""Real taskmeter processes for the reliability tests and the load bench: `taskmeter serve` that
can be killed with SIGKILL and started again on the same port, one-shot CLI commands, and a
private PostgreSQL cluster that a test may stop and start (never the shared server).

Every process is started in a session of its own and ended by its pid only.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

TASKMETER = Path(sys.executable).with_name("taskmeter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def taskmeter_env(database_url: str, secret: str, **settings: Any) -> dict[str, str]:
    """The environment of a taskmeter process: its database, its secret, and `TASKMETER_<NAME>`
    for each keyword (`scheduler_enabled=False` → `TASKMETER_SCHEDULER_ENABLED=false`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMETER_")}
    env.update(TASKMETER_DATABASE_URL=database_url, TASKMETER_SECRET_KEY=secret, TASKMETER_ENV="test")
    for name, value in settings.items():
        env[f"TASKMETER_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def kill9(process: subprocess.Popen[Any]) -> None:
    """SIGKILL, by pid, and reap it (closing our ends of its pipes)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def start_cli(args: Sequence[str], env: Mapping[str, str], log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """`taskmeter ARGS...` in the background; stdout and stderr go to `log` (default: pipes)."""
    out: Any = log if log is not None else subprocess.PIPE
    err: Any = subprocess.STDOUT if log is not None else subprocess.PIPE
    return subprocess.Popen([str(TASKMETER), *args], env=dict(env), stdout=out, stderr=err, start_new_session=True)


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`taskmeter ARGS...` to completion: its exit code, stdout and stderr."""
    return subprocess.run(
        [str(TASKMETER), *args], env=dict(env), capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


class ServeProcess:
    """`taskmeter serve` on a fixed loopback port, its output appended to `log_path`. `kill9()`
    then `start()` restarts it where clients already point."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None) -> None:
        self.env = dict(env)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> ServeProcess:
        with self.log_path.open("ab") as log:
            self.process = start_cli(["serve", "--port", str(self.port), "--log-level", "warning"], self.env, log)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"taskmeter serve exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"taskmeter serve did not answer within {timeout}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def kill9(self) -> None:
        if self.process is not None:
            kill9(self.process)

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully, the scheduler waits for its jobs), SIGKILL if stuck."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            kill9(self.process)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a PostgreSQL cluster of the test's own ---------------------------------------------------------


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in `root` on a loopback port, run as the `postgres` user
    when we are root (initdb refuses root). `stop()` and `start()` affect this cluster only."""

    def __init__(self, root: Path) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/taskmeter"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root without runuser: cannot start PostgreSQL as postgres")
            self._as_user = [runuser, "-u", "postgres", "--"]
            root.mkdir(parents=True, exist_ok=True)
            shutil.chown(root, "postgres", "postgres")
            root.chmod(0o700)

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr or result.stdout}")

    def init(self) -> PrivatePostgres:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "--no-instructions", "-E", "UTF8")  # fmt: skip
        self.start()
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "taskmeter")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash as far as clients can tell: connections drop, recovery at start."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)
