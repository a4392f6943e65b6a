"""
app.py under load: N = 1, 4, 16 concurrent clients each sending text queries ("Text -> images", the page's
`/search_images` API over plain HTTP as Gradio documents it, `AppServer.call`; the page's own requests go the same way) one after the other for `--seconds`, against one
running server. Per N: throughput (answered queries per second), p50 / p95 / p99 latency, errors, and the server's
resident memory before and after. The server is started once on the quickstart's folder and catalogue (its indexes
saved by an earlier start) and warmed up with a few queries first. Queries are captions drawn from the catalogue.

    python bench/demo_load.py                                  # writes bench/results/demo_load.json
    python bench/demo_load.py --clients 4 --seconds 20 --app_args "--concurrency_limit 2"
"""

import json
import os
import shlex
import tempfile
from pathlib import Path

from xmodal.benchmarking import AppServer, add_output_argument, bench_parser, drive_clients, run_environment, write_json

ROOT = Path(__file__).resolve().parents[1]


def drive(server: AppServer, model: str, queries: list[str], clients: int, seconds: float, top_k: int, seed: int) -> dict:
    """`clients` threads, each sending random catalogue captions over HTTP until `seconds` have passed."""
    phase = drive_clients(
        lambda rng: server.call("search_images", model, queries[int(rng.integers(len(queries)))], top_k), clients, seconds, seed
    )
    phase["queries_per_second"] = phase.pop("per_second")
    return phase


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="outputs/fashionbert/final", help="FashionBERT folder (with dual-encoder heads).")
    parser.add_argument("--catalogue_dir", default="outputs/fashionbert/catalogue")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of each load phase.")
    parser.add_argument("--top_k", type=int, default=5, help="The page's default top-k.")
    parser.add_argument("--warmup_queries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds to wait for the server to answer at start.")
    parser.add_argument("--app_args", default="", help='More app.py arguments, in one string (e.g. "--concurrency_limit 2").')
    add_output_argument(parser, "demo_load")
    args = parser.parse_args()
    load_before = os.getloadavg()
    [catalogue] = [p for p in Path(args.catalogue_dir).glob("*/catalogue.json")]
    queries = sorted(set(json.loads(catalogue.read_text())["rows"]["captions"]))
    arguments = ["--fashionbert_model", args.model, "--catalogue_dir", args.catalogue_dir, "--no_activity", *shlex.split(args.app_args)]
    result = {"model": args.model, "app_args": args.app_args, "top_k": args.top_k, "phases": []}
    log = Path(tempfile.gettempdir()) / f"{Path(args.output).stem}.server.log"  # not beside the results
    with AppServer(ROOT, arguments, log) as server:
        result["page_seconds"] = server.wait_for_page(args.timeout)
        result["first_answer_seconds"] = server.wait_for_answer(args.timeout, "search_images", args.model, queries[0], args.top_k)
        print(f"page up after {result['page_seconds']:.1f} s, first answer after {result['first_answer_seconds']:.1f} s", flush=True)
        for query in queries[1 : 1 + args.warmup_queries]:
            server.call("search_images", args.model, query, args.top_k)
        for clients in args.clients:
            before = server.resident_mb()
            phase = drive(server, args.model, queries, clients, args.seconds, args.top_k, args.seed)
            phase.update(resident_mb_before=before, resident_mb_after=server.resident_mb())
            result["phases"].append(phase)
            lat = phase["latency_seconds"]
            print(f"N={clients}: {phase['queries_per_second']:.2f} queries/s, p50 {lat.get('p50', float('nan')):.2f} s, "
                  f"p95 {lat.get('p95', float('nan')):.2f} s, p99 {lat.get('p99', float('nan')):.2f} s, errors {phase['errors']}, "
                  f"RSS {before:.0f} -> {phase['resident_mb_after']:.0f} MB", flush=True)  # fmt: skip
    result["environment"] = run_environment(load_before)
    result["environment"]["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    write_json(args.output, result)


if __name__ == "__main__":
    main()
