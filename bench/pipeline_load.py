"""
The `fashion-retrieval` pipeline under load in a plain transformers process (the pipeline, model and processor come
from the folder's remote code through `trust_remote_code=True`; the folder is first re-saved into a temporary folder
with this checkout's code files, so that the pipeline measured is the current one): N = 1, 4, 16 threads share one
pipeline, each ranking `--candidates` catalogue images for a
caption query, one call after the other, for `--seconds`. Per N: calls per second, p50 / p95 / p99 latency, errors,
and this process's resident memory before and after (no growth beyond the first calls).

    python bench/pipeline_load.py                    # writes bench/results/pipeline_load.json
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
from transformers import AutoProcessor, pipeline

from xmodal import FashionBertForPreTraining
from xmodal.benchmarking import add_output_argument, bench_parser, drive_clients, resident_mb, run_environment, write_json
from xmodal.hub import save_model_folder


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="outputs/fashionbert/final")
    parser.add_argument("--catalogue_dir", default="outputs/fashionbert/catalogue")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--candidates", type=int, default=30, help="Images ranked per call.")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "float32"])
    add_output_argument(parser, "pipeline_load")
    args = parser.parse_args()
    load_before = os.getloadavg()
    [catalogue] = Path(args.catalogue_dir).glob("*/catalogue.json")
    rows = json.loads(catalogue.read_text())["rows"]
    folder = catalogue.parent / "images"
    rng = np.random.default_rng(0)
    picks = rng.choice(len(rows["files"]), 64 * args.candidates, replace=False)
    images = [PIL.Image.open(folder / rows["files"][i]).convert("RGB") for i in picks]  # decoded once, as a service would
    queries = [rows["captions"][i] for i in picks]
    refreshed = Path(tempfile.mkdtemp(prefix="pipeline_load_")) / "model"
    save_model_folder(refreshed, FashionBertForPreTraining.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model))
    search = pipeline("fashion-retrieval", model=str(refreshed), trust_remote_code=True, device="cpu")
    search(queries[0], candidate_images=images[: args.candidates], precision=args.precision)  # warm-up
    result = {"model": args.model, "candidates": args.candidates, "precision": args.precision, "phases": []}
    for clients in args.clients:
        before = resident_mb()

        def call(rng) -> None:
            start = int(rng.integers(64)) * args.candidates
            search(queries[start], candidate_images=images[start : start + args.candidates], top_k=5, precision=args.precision)

        phase = drive_clients(call, clients, args.seconds)
        phase["calls"], phase["calls_per_second"] = phase.pop("answered"), phase.pop("per_second")
        phase.update(resident_mb_before=before, resident_mb_after=resident_mb())
        result["phases"].append(phase)
        lat = phase["latency_seconds"]
        print(f"N={clients}: {phase['calls_per_second']:.2f} calls/s, p50 {lat.get('p50', float('nan')):.2f} s, p95 {lat.get('p95', float('nan')):.2f} s, "
              f"errors {phase['errors']}, RSS {before:.0f} -> {phase['resident_mb_after']:.0f} MB", flush=True)  # fmt: skip
    result["environment"] = run_environment(load_before)
    write_json(args.output, result)


if __name__ == "__main__":
    main()
