# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""What the scripts under `bench/` share: their command line, the setup of a timed run, and the JSON result file.

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


__all__ = ["bench_parser", "add_output_argument", "add_speed_arguments", "start_speed_run", "run_environment", "write_json"]

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
