# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""What the scripts under `bench/` share: their command line, the setup of a timed run, the JSON result file, and
app.py run as a server (`AppServer`).

A speed script is built from these pieces:

```python
parser = bench_parser(__doc__)
parser.add_argument("--repeats", type=int, default=3)  # the script's own arguments
add_speed_arguments(parser, "speed_fashionbert", quick_help="Tiny run (seconds).")
args = parser.parse_args()
load_before = start_speed_run(args)
...
write_json(args.output, {..., "environment": run_environment(load_before)})
```
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


__all__ = [
    "AppServer", "add_output_argument", "add_speed_arguments", "bench_parser", "drive_clients", "free_port",
    "latency_percentiles", "log_tail", "resident_mb", "run_environment", "start_speed_run", "write_json",
]

THREADS_HELP = "torch threads (1: steadiest on a shared machine)."


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose `--help` shows the script's docstring `doc` as written (line breaks kept)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_argument(parser: argparse.ArgumentParser, name: str, help: str = "JSON result path.") -> None:
    """`--output`, by default `bench/results/<name>.json`."""
    parser.add_argument("--output", default=f"bench/results/{name}.json", help=help)


def add_speed_arguments(parser: argparse.ArgumentParser, name: str, quick_help: str) -> None:
    """The last arguments of every speed script, in this order: `--threads`, `--quick`, `--seed` and `--output`."""
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0)
    add_output_argument(parser, name)


def start_speed_run(args: argparse.Namespace) -> tuple[float, float, float]:
    """Sets torch's threads (`args.threads`) and seed (`args.seed`); returns the load average before the run."""
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    torch.manual_seed(args.seed)
    return load_before


def run_environment(load_before: tuple[float, float, float]) -> dict:
    """What a timing depends on: torch version, threads, CPU, and the load average before and after the run."""
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def write_json(path: str | os.PathLike, result: dict, sort_keys: bool = True) -> None:
    """Writes `result` as indented JSON (keys sorted unless `sort_keys=False`) and a final newline, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=sort_keys) + "\n")


def latency_percentiles(seconds: list[float]) -> dict[str, float]:
    """`{"p50", "p95", "p99"}` of a list of latencies in seconds (empty when there are none)."""
    import numpy as np

    return {f"p{q}": float(np.percentile(seconds, q)) for q in (50, 95, 99)} if seconds else {}


def drive_clients(call, clients: int, seconds: float, seed: int = 0) -> dict:
    """
    `clients` threads, each calling `call(rng)` (`rng`: its own `numpy.random.Generator`, seeded from `seed`, `clients`
    and its number) one call after the other until `seconds` have passed. Returns the phase: `clients`, `seconds`
    (until the last call in flight at the deadline came back), `answered`, `per_second`, `latency_seconds`
    (`latency_percentiles`), `errors` and up to three `error_examples`.
    """
    import threading
    import time

    import numpy as np

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(number: int) -> None:
        rng = np.random.default_rng([seed, clients, number])
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                call(rng)
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(error).__name__}: {error}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": elapsed, "answered": len(latencies), "per_second": len(latencies) / elapsed,
            "latency_seconds": latency_percentiles(latencies), "errors": len(errors), "error_examples": errors[:3]}  # fmt: skip


def resident_mb(pid: int | str = "self") -> float:
    """The resident memory (VmRSS, Linux) of process `pid` (default: this one), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# app.py as a server (bench/demo_startup.py, bench/demo_load.py, bench/demo_screenshot.py)
# ---------------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now, on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log: str | os.PathLike, lines: int = 15) -> str:
    """The last `lines` lines of a log file (empty when it does not exist)."""
    path = Path(log)
    return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:]) if path.is_file() else ""


class AppServer:
    """
    `python app.py ARGUMENTS --port <free>` run from `root`, its output in `log`; a context manager that stops it on exit
    (also on an error). `url` is its address; `started` the `time.monotonic()` of the launch.
    """

    def __init__(self, root: str | os.PathLike, arguments: list[str], log: str | os.PathLike, python: str | None = None):
        import sys

        self.root, self.arguments, self.log = Path(root), list(arguments), Path(log)
        self.python = python or sys.executable
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = None
        self.started = 0.0

    def __enter__(self) -> AppServer:
        import subprocess
        import time

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as handle:
            self.started = time.monotonic()
            self.process = subprocess.Popen([self.python, str(self.root / "app.py"), *self.arguments, "--port", str(self.port)],
                                            cwd=self.root, stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"app.py exited with {self.process.returncode}; its log ({self.log}):\n{log_tail(self.log)}")

    def wait_for_page(self, timeout: float) -> float:
        """Seconds from the launch until the page answers HTTP 200."""
        import time
        import urllib.request

        while time.monotonic() - self.started < timeout:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app.py did not serve {self.url} within {timeout:.0f} s; its log ({self.log}):\n{log_tail(self.log)}")

    def call(self, api_name: str, *data) -> list:
        """
        One call of the page's API `api_name` (e.g. "search_images") over plain HTTP, as Gradio documents it (POST
        `/gradio_api/call/<api_name>`, then the server-sent events of its result): the outputs, or a `RuntimeError`
        with the page's message. Lighter than Gradio's client, so clients on the server's machine take less of it.
        """
        import json
        import urllib.request

        url = f"{self.url}gradio_api/call/{api_name}"
        request = urllib.request.Request(url, data=json.dumps({"data": list(data)}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            event_id = json.load(response)["event_id"]
        with urllib.request.urlopen(f"{url}/{event_id}", timeout=600) as response:
            event = None
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    payload = json.loads(line[len("data: "):])
                    if event == "error":
                        raise RuntimeError(f"{api_name}: {payload}")
                    return payload
        raise RuntimeError(f"{api_name}: the server closed the stream without a result")

    def wait_for_answer(self, timeout: float, api_name: str, *data) -> float:
        """Seconds from the launch until `call(api_name, *data)` succeeds (a search sent during start-up waits)."""
        import time

        while True:
            self._check_alive()
            try:
                self.call(api_name, *data)
                return time.monotonic() - self.started
            except (OSError, RuntimeError) as error:  # not serving yet, or not ready: retried until the timeout
                if time.monotonic() - self.started > timeout:
                    raise RuntimeError(f"app.py gave no answer within {timeout:.0f} s ({error}); its log: {self.log}") from error
                time.sleep(1.0)

    def resident_mb(self) -> float:
        """The server's resident memory (VmRSS, Linux), in MB."""
        return resident_mb(self.process.pid)

    def stop(self) -> None:
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
