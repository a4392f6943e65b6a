"""
How long app.py takes to be usable, and how long a text query takes through the page against the search alone.

Starts (app.py with its defaults, the MAP-IVR tab included): the first start (a fresh `--catalogue_dir`: it renders the
10,000-product catalogue and builds the checkpoint's image and caption indexes) and the second (it loads them), each timed from the launch to the page's first HTTP 200
("page") and to the first answered "Text -> images" search through the page's API ("usable"; a search sent during
start-up waits for the image index). Queries: `--queries` captions of the catalogue, one after the other, through
the page (its `/search_images` API over HTTP, `AppServer.call`; result files not downloaded), then, once the server
has stopped, in this process through `FashionRetriever.search_images` alone on the index the app saved (the same text
embedding, first stage and re-ranking of `--rerank_top_n` candidates); the difference is what the page adds.

    python bench/demo_startup.py --catalogue_dir /tmp/demo_catalogue           # both starts + queries
    python bench/demo_startup.py --catalogue_dir outputs/fashionbert/catalogue --only_queries
"""

import json
import os
import time
from pathlib import Path

import numpy as np

from xmodal.benchmarking import AppServer, add_output_argument, bench_parser, run_environment, write_json
from xmodal.retrieval import FashionRetriever
from xmodal.retrieval.fashionbert import FIRST_STAGE_K

ROOT = Path(__file__).resolve().parents[1]


def summary(seconds: list[float]) -> dict:
    return {"p50": float(np.percentile(seconds, 50)), "p95": float(np.percentile(seconds, 95)), "max": max(seconds), "all": seconds}


def timed_start(arguments: list[str], log: Path, model: str, query: str, timeout: float) -> dict:
    with AppServer(ROOT, arguments, log) as server:
        page = server.wait_for_page(timeout)
        usable = server.wait_for_answer(timeout, "search_images", model, query, 5)
        return {"page_seconds": page, "usable_seconds": usable, "resident_mb": server.resident_mb()}


def query_seconds(arguments: list[str], log: Path, model: str, catalogue_dir: str, rerank_top_n: int,
                  queries: list[str], timeout: float) -> tuple[list[float], list[float]]:
    """
    Seconds per query through the page's API, then, once the server has stopped, through
    `FashionRetriever.search_images` alone (the app's settings, on the index the app saved), the same queries after
    the same warm-ups.
    """
    retriever = FashionRetriever.from_pretrained(model, rerank_top_n=rerank_top_n, cache_size=4 * rerank_top_n)
    folders = [f for f in Path(catalogue_dir).glob("*/index-*/images") if f.parent.name.endswith(retriever.model_fingerprint.split(":")[-1][:16])]
    if len(folders) != 1:
        raise SystemExit(f"{catalogue_dir}: expected one saved index of {model}, found {len(folders)}")
    retriever.load_index(folders[0])
    with AppServer(ROOT, arguments, log) as server:
        server.wait_for_page(timeout)
        server.wait_for_answer(timeout, "search_images", model, "red dress", 5)
        for warm in ("black coat", "white shirt"):
            server.call("search_images", model, warm, 5)
        page = []
        for query in queries:
            started = time.perf_counter()
            server.call("search_images", model, query, 5)
            page.append(time.perf_counter() - started)
    # After the server has stopped: interleaved with the server's queries, this process's search measured 1.3 s p50
    # against the page's 0.7 s (the server's threads, still spinning after each query, share the 2 cores).
    for warm in ("black coat", "white shirt"):
        retriever.search_images(warm, top_k=5, first_stage_k=rerank_top_n)
    alone = []
    for query in queries:
        started = time.perf_counter()
        retriever.search_images(query, top_k=5, first_stage_k=rerank_top_n)
        alone.append(time.perf_counter() - started)
    return page, alone


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="outputs/fashionbert/final", help="A FashionBERT folder with dual-encoder heads.")
    parser.add_argument("--catalogue_dir", required=True, help="A fresh folder for the catalogue and its indexes (an existing one with --only_queries).")
    parser.add_argument("--num_products", type=int, default=10_000)
    parser.add_argument("--rerank_top_n", type=int, default=None, help="Default: app.py's (FIRST_STAGE_K).")
    parser.add_argument("--queries", type=int, default=20, help="Catalogue captions timed as queries.")
    parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds to wait for one start.")
    parser.add_argument("--only_queries", action="store_true", help="Time the queries on an existing --catalogue_dir; keep the start-up times of --output.")
    add_output_argument(parser, "demo_startup")
    args = parser.parse_args()
    load_before = os.getloadavg()
    # The starts are app.py's as a user runs it (the MAP-IVR tab's gallery included, rendered after the catalogue's
    # indexes); the query timings without it, so that nothing else runs meanwhile.
    arguments = ["--fashionbert_model", args.model, "--catalogue_dir", args.catalogue_dir, "--num_products", str(args.num_products)]
    if args.rerank_top_n is not None:
        arguments += ["--rerank_top_n", str(args.rerank_top_n)]
    rerank_top_n = FIRST_STAGE_K if args.rerank_top_n is None else args.rerank_top_n
    log_dir = Path(args.catalogue_dir.rstrip("/") + "_logs")
    if args.only_queries:
        result = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else {}
    else:
        if Path(args.catalogue_dir).exists():
            parser.error(f"--catalogue_dir {args.catalogue_dir}: exists; the first start must render and index from scratch")
        first_query = "red long-sleeve dress with a round neck"
        result = {"model": args.model, "num_products": args.num_products}
        result["first_start"] = timed_start(arguments, log_dir / "first.log", args.model, first_query, args.timeout)
        print(f"first start (render + index): page {result['first_start']['page_seconds']:.0f} s, usable {result['first_start']['usable_seconds']:.0f} s", flush=True)
        result["second_start"] = timed_start(arguments, log_dir / "second.log", args.model, first_query, args.timeout)
        print(f"second start (saved indexes): page {result['second_start']['page_seconds']:.0f} s, usable {result['second_start']['usable_seconds']:.0f} s", flush=True)
    [catalogue] = Path(args.catalogue_dir).glob("*/catalogue.json")
    captions = sorted(set(json.loads(catalogue.read_text())["rows"]["captions"]))
    queries = [captions[i] for i in np.random.default_rng(0).choice(len(captions), args.queries, replace=False)]
    result["rerank_top_n"] = rerank_top_n
    page, alone = query_seconds([*arguments, "--no_activity"], log_dir / "queries.log", args.model, args.catalogue_dir, rerank_top_n, queries, args.timeout)
    result["page_query_seconds"], result["api_query_seconds"] = summary(page), summary(alone)
    page, api = result["page_query_seconds"], result["api_query_seconds"]
    print(f"query through the page: p50 {page['p50']:.2f} s, p95 {page['p95']:.2f} s; search alone: p50 {api['p50']:.2f} s, p95 {api['p95']:.2f} s", flush=True)
    result["environment"] = run_environment(load_before)  # the app's threads: OMP_NUM_THREADS as inherited
    result["environment"]["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    write_json(args.output, result)


if __name__ == "__main__":
    main()
