"""
How long app.py takes to start with the 10,000-product catalogue: the first start renders the catalogue and builds the
checkpoint's indexes, the second loads them. Each start is timed from launch to the first HTTP 200 on 127.0.0.1, then
the server is stopped; a third phase times the "Text -> images" tab's search (`FashionRetriever.search_images` on the
index the app saved: text embedding, first stage, cross-encoder on `--rerank_top_n` candidates).

    python bench/demo_startup.py --model outputs/fashionbert/final --catalogue_dir /tmp/demo_catalogue
    python bench/demo_startup.py --model ... --catalogue_dir /tmp/demo_catalogue --only_queries   # the third phase again
"""

import os
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from xmodal.benchmarking import add_output_argument, bench_parser, run_environment, write_json
from xmodal.retrieval import FashionRetriever

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_start(arguments: list[str], log: Path, timeout: float) -> float:
    """Seconds from launching app.py to its first HTTP 200; the server is stopped afterwards."""
    port = free_port()
    started = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *arguments, "--port", str(port)], cwd=ROOT,
                                   stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                raise SystemExit(f"app.py exited with {process.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"app.py did not serve within {timeout} s; see {log}")
    finally:
        process.terminate()
        process.wait(timeout=60)


def query_seconds(model: str, catalogue_dir: str, rerank_top_n: int) -> list[float]:
    """Seconds per query of the app's text search, on the image index the app saved for `model` under `catalogue_dir`."""
    retriever = FashionRetriever.from_pretrained(model, rerank_top_n=rerank_top_n, cache_size=4 * rerank_top_n)
    folders = [f for f in Path(catalogue_dir).glob("*/index-*/images") if f.parent.name.endswith(retriever.model_fingerprint.split(":")[-1][:16])]
    if len(folders) != 1:
        raise SystemExit(f"{catalogue_dir}: expected one saved index of {model}, found {len(folders)}")
    retriever.load_index(folders[0])
    retriever.search_images("red dress", top_k=5, first_stage_k=rerank_top_n)  # warm-up
    timings = []
    for query in ["red long sleeve dress", "black wool coat with pockets", "white t-shirt", "blue jeans", "green skirt"]:
        started = time.perf_counter()
        retriever.search_images(query, top_k=5, first_stage_k=rerank_top_n)
        timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", required=True, help="A FashionBERT folder with dual-encoder heads.")
    parser.add_argument("--catalogue_dir", required=True, help="A fresh folder for the catalogue and its indexes.")
    parser.add_argument("--num_products", type=int, default=10_000)
    parser.add_argument("--rerank_top_n", type=int, default=100, help="app.py's default.")
    parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds to wait for one start.")
    parser.add_argument("--only_queries", action="store_true", help="Time the queries on an existing --catalogue_dir; keep the start-up times of --output.")
    add_output_argument(parser, "demo_startup")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.only_queries:
        result = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else {}
    else:
        if Path(args.catalogue_dir).exists():
            parser.error(f"--catalogue_dir {args.catalogue_dir}: exists; the first start must render and index from scratch")
        arguments = ["--fashionbert_model", args.model, "--catalogue_dir", args.catalogue_dir,
                     "--num_products", str(args.num_products), "--rerank_top_n", str(args.rerank_top_n), "--no_activity"]  # fmt: skip
        log_dir = Path(args.catalogue_dir + "_logs")
        log_dir.mkdir(parents=True)
        result = {"model": args.model, "num_products": args.num_products}
        result["first_start_seconds"] = timed_start(arguments, log_dir / "first.log", args.timeout)
        print(f"first start (render + index): {result['first_start_seconds']:.0f} s", flush=True)
        result["second_start_seconds"] = timed_start(arguments, log_dir / "second.log", args.timeout)
        print(f"second start (load the saved indexes): {result['second_start_seconds']:.0f} s", flush=True)
    result["query_seconds"] = query_seconds(args.model, args.catalogue_dir, args.rerank_top_n)
    print(f"one query (index + re-rank of {args.rerank_top_n}): {sorted(result['query_seconds'])[2]:.2f} s median", flush=True)
    result["environment"] = run_environment(load_before)  # the app's threads: OMP_NUM_THREADS as inherited
    result["environment"]["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    write_json(args.output, result)


if __name__ == "__main__":
    main()
