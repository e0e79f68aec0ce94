"""A real Dask distributed cluster on loopback: one `dask scheduler` and N `dask worker`
processes (one thread each, no nanny: a worker killed with SIGKILL stays dead), on free ports,
with their files under a given folder. Started in sessions of their own, ended by pid only.

The workers run from the repository's root with it on their path, so functions of this
repository (tests included) unpickle there as they do here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support.processes import free_port, kill9

DASK = Path(sys.executable).with_name("dask")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LocalCluster:
    folder: Path
    workers: int = 2
    allowed_failures: int | None = None
    """The scheduler's `distributed.scheduler.allowed-failures`: worker deaths a task survives
    (Dask's default, 3, when None)."""
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    worker_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], **environ: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("wb")
        self._logs.append(log)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "warning"
        env.update(environ)
        return subprocess.Popen(
            [str(DASK), *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        file = self.folder / "scheduler.json"
        port = free_port()
        self.scheduler = self._spawn(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
                "--scheduler-file",
                str(file),
            ],
            **({} if self.allowed_failures is None else {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(self.allowed_failures)}),
        )
        self.address = f"tcp://127.0.0.1:{port}"
        self._wait_for(
            lambda: file.exists() and bool(json.loads(file.read_text() or "{}").get("address")),
            "the scheduler",
        )
        for number in range(self.workers):
            directory = self.folder / f"worker-{number}"
            directory.mkdir(exist_ok=True)
            self.worker_processes.append(
                self._spawn(
                    f"worker-{number}",
                    [
                        "worker",
                        self.address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--local-directory",
                        str(directory),
                        "--name",
                        f"worker-{number}",
                    ],
                )  # fmt: skip
            )
        self.wait_for_workers(self.workers)

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=timeout)

    def worker_pids(self) -> dict[str, int]:
        """The address of each live worker, with its process id."""
        from distributed import Client

        with Client(self.address, set_as_default=False) as client:
            return {address: int(pid) for address, pid in client.run(os.getpid).items()}

    def _wait_for(self, ready: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.scheduler is not None and self.scheduler.poll() is not None:
                raise RuntimeError(f"{what} exited: {(self.folder / 'scheduler.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.worker_processes:
            kill9(process)
        if self.scheduler is not None:
            kill9(self.scheduler)
        for log in self._logs:
            log.close()
