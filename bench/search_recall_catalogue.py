"""
Recall of the approximate indexes on real embeddings: the image and caption vectors a trained FashionBERT gave the
demo's catalogue (the index folder app.py / bench/demo_startup.py saved), searched with HNSW and IVF at their default
parameters against exact search. Random vectors (bench/search_fashionbert.py, table d) have no cluster structure and
are the worst case for both; this is the case the demo and a real catalogue have.

    python bench/search_recall_catalogue.py --index_dir /tmp/demo_catalogue/products10000-views1-px128-seed7/index-d2cafcbfa3396872
"""

import time
from pathlib import Path

import numpy as np

from xmodal.benchmarking import add_output_argument, bench_parser, write_json
from xmodal.indexing import EmbeddingIndex


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--index_dir", required=True, help="A catalogue index folder (holding images/ and captions/).")
    parser.add_argument("--queries", type=int, default=500, help="Caption embeddings used as text queries.")
    parser.add_argument("--top_k", type=int, default=100)
    add_output_argument(parser, "search_recall_catalogue")
    args = parser.parse_args()
    folder = Path(args.index_dir)
    images = EmbeddingIndex.load(folder / "images", backend="torch").get_vectors().numpy()
    captions = EmbeddingIndex.load(folder / "captions", backend="torch").get_vectors().numpy()
    queries = captions[np.random.default_rng(0).choice(len(captions), args.queries, replace=False)]
    _, exact = EmbeddingIndex.build(images, kind="exact").search(queries, args.top_k)
    result = {"index_dir": str(folder), "images": len(images), "queries": args.queries, "top_k": args.top_k, "kinds": {}}
    for kind in ("hnsw", "ivf"):
        started = time.monotonic()
        index = EmbeddingIndex.build(images, kind=kind)
        build_seconds = time.monotonic() - started
        _, found = index.search(queries, args.top_k)
        recall = np.mean([len(set(f.tolist()) & set(e.tolist())) / args.top_k for f, e in zip(found, exact)])
        result["kinds"][kind] = {"params": index.params, "recall_percent": 100.0 * float(recall), "build_seconds": build_seconds}
        print(f"{kind}: {index.params}, recall@{args.top_k} vs exact {100 * recall:.1f} %", flush=True)
    write_json(args.output, result)


if __name__ == "__main__":
    main()
