"""Speed and memory of MAP-IVR gallery scoring: `MapIvrModel.score` for Q image queries x N videos x h hallucinated
samples, next to the bare matrix products of the same shapes and a naive per-video Python loop.

The model has the default `MapIvrConfig` sizes (4,096-d features, 512-d appearance, 64-d latent) and random weights;
the gallery is an already encoded `MapIvrEncodedVideos` (random unit vectors), so what is timed is the scoring itself:
S_A = 1 - cos(a^u, a^v) and S_V = min over h codes of 1 - cos(v_bar, D_v([z ; a^u])).

- `score`: `MapIvrModel.score(image_features, encoded_gallery, motion_codes=...)`.
- bare product: `(Q, 512) @ (512, N)` and `(Q * h, 4096) @ (4096, N)` with `torch.mm` on the same unit vectors (no
  max over h, no chunking, no query encoding or decoding): the floor.
- naive loop: for each video, its S_A and S_V against every query, the queries' h hallucinated videos decoded again
  for that video (a literal per-video reading of S_V) -- timed on `--naive_videos` videos and SCALED linearly to N
  (labelled as such). A second naive variant, `naive_cached_loop`, keeps the decoded hallucinations and only loops over
  videos in Python (one matrix-vector product per video), to show what the loop alone costs.

Peak memory: the process's peak resident set (VmHWM, reset before each measurement through /proc/self/clear_refs)
minus the resident set just before it (the script re-executes itself with MALLOC_MMAP_THRESHOLD_=65536 so that large
buffers go back to the OS when freed and are counted again by the next call). N = 1e6 is skipped by default: its encoded gallery alone is
1e6 x (512 + 4096) float32 = 18.4 GB, about this machine's whole memory (pass `--num_videos 1000000` to try anyway).

    python bench/speed_map_ivr_gallery.py          # writes bench/results/speed_map_ivr_gallery.json
    python bench/speed_map_ivr_gallery.py --quick  # seconds: N = 1,000 and 5,000
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xmodal.benchmarking import add_speed_arguments, bench_parser, run_environment, start_speed_run, write_json
from xmodal.map_ivr import MapIvrConfig, MapIvrModel
from xmodal.map_ivr.modeling_map_ivr import MapIvrEncodedVideos


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def measure(fn) -> tuple[float, float]:
    """(seconds, peak extra resident memory in MB) of `fn()`; memory via VmHWM reset (Linux), -1 if unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = (_status_kb("VmHWM") - base) / 1024 if base is not None else -1.0
    del out
    return seconds, peak


def bare_product(query_appearance, hallucinated, gallery: MapIvrEncodedVideos):
    """The two matrix products of the same shapes, nothing else."""
    return query_appearance @ gallery.appearance.T, hallucinated @ gallery.video_features.T


def naive_recompute(model: MapIvrModel, image_appearance, codes, gallery: MapIvrEncodedVideos, num_videos: int):
    """Per video: decode every query's h codes again, then cosines (a literal per-pair reading of S_V)."""
    s_a, s_v = [], []
    unit_appearance = F.normalize(image_appearance, dim=-1)
    with torch.no_grad():
        for n in range(num_videos):
            decoded = F.normalize(model.decode(codes, image_appearance.unsqueeze(1)), dim=-1)  # (Q, h, D)
            s_a.append(1.0 - unit_appearance @ gallery.appearance[n])
            s_v.append(1.0 - (decoded @ gallery.video_features[n]).amax(dim=1))
    return torch.stack(s_a, 1), torch.stack(s_v, 1)


def naive_cached_loop(unit_appearance, hallucinated, num_queries: int, gallery: MapIvrEncodedVideos, num_videos: int):
    """Per video: one matrix-vector product against the cached hallucinations (only the loop is naive)."""
    s_a, s_v = [], []
    for n in range(num_videos):
        s_a.append(1.0 - unit_appearance @ gallery.appearance[n])
        s_v.append(1.0 - (hallucinated @ gallery.video_features[n]).view(num_queries, -1).amax(dim=1))
    return torch.stack(s_a, 1), torch.stack(s_v, 1)


def random_gallery(num_videos: int, config: MapIvrConfig, generator: torch.Generator) -> MapIvrEncodedVideos:
    appearance = torch.randn(num_videos, config.appearance_dim, generator=generator)
    video = torch.randn(num_videos, config.video_feature_dim, generator=generator)
    return MapIvrEncodedVideos(appearance=F.normalize(appearance, dim=-1), video_features=F.normalize(video, dim=-1))


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Restart with glibc serving every allocation above 64 KiB by mmap (returned to the OS on free), so a freed
        # buffer is not silently reused from the heap and the resident-set peaks below count each call's memory.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = bench_parser(__doc__)
    parser.add_argument("--num_queries", type=int, default=20, help="Q image queries.")
    parser.add_argument("--num_samples", type=int, default=10, help="h hallucinated videos per query.")
    parser.add_argument("--num_videos", type=int, nargs="+", default=[10_000, 100_000], help="Gallery sizes N.")
    parser.add_argument("--naive_videos", type=int, default=20, help="Videos the naive loops run on (then scaled).")
    parser.add_argument("--repeats", type=int, default=3)
    add_speed_arguments(parser, "speed_map_ivr_gallery", quick_help="Seconds-long run: N = 1,000 and 5,000.")
    args = parser.parse_args()
    if args.quick:
        args.num_videos, args.repeats, args.naive_videos = [1_000, 5_000], 2, 5
    load_before = start_speed_run(args)
    generator = torch.Generator().manual_seed(args.seed)

    config = MapIvrConfig()
    model = MapIvrModel(config).eval()
    q, h = args.num_queries, args.num_samples
    image_features = torch.randn(q, config.image_feature_dim, generator=generator)
    codes = model.sample_motion_codes(q, h, generator)
    with torch.no_grad():
        image_appearance = model.encode_images(image_features)
        unit_appearance = F.normalize(image_appearance, dim=-1)
        hallucinated = model.hallucinate_videos(image_appearance, codes).reshape(q * h, -1)

    rows = {}
    for num_videos in args.num_videos:
        gallery = random_gallery(num_videos, config, generator)
        naive_n = min(args.naive_videos, num_videos)
        runs = {
            "score": lambda: model.score(image_features, gallery, motion_codes=codes),
            "bare_product": lambda: bare_product(unit_appearance, hallucinated, gallery),
            "naive_recompute": lambda: naive_recompute(model, image_appearance, codes, gallery, naive_n),
            "naive_cached_loop": lambda: naive_cached_loop(unit_appearance, hallucinated, q, gallery, naive_n),
        }
        runs["score"]()  # warm-up (and the check below)
        seconds = {name: [] for name in runs}
        memory = {name: [] for name in runs}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    s, m = measure(fn)
                    if name.startswith("naive"):
                        s *= num_videos / naive_n  # SCALED from naive_n videos to N (linear in N)
                    seconds[name].append(s)
                    memory[name].append(m)
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))  # noqa: E731
        rows[str(num_videos)] = {
            "num_videos": num_videos,
            "seconds_median": {k: statistics.median(v) for k, v in seconds.items()},
            "seconds_all": seconds,
            "pairs_per_second": {k: q * num_videos / statistics.median(v) for k, v in seconds.items()},
            "peak_extra_memory_mb_max": {k: max(v) for k, v in memory.items()},
            "naive_measured_on_videos": naive_n,
            "score_over_bare_time": ratio("score", "bare_product"),
            "naive_recompute_over_score_time": ratio("naive_recompute", "score"),
            "naive_cached_loop_over_score_time": ratio("naive_cached_loop", "score"),
            "gallery_mb": num_videos * (config.appearance_dim + config.video_feature_dim) * 4 / 2**20,
            "scores_mb": 3 * q * num_videos * 4 / 2**20,
        }
        del gallery
    skipped = [] if any(n >= 1_000_000 for n in args.num_videos) else [
        {"num_videos": 1_000_000, "reason": "encoded gallery alone = 1e6 x 4608 float32 = 18.4 GB (17.2 GiB), about "
         "the whole memory of this machine (23 GB, shared)"}]
    result = {
        "config": {"num_queries": q, "num_samples": h, "num_videos": args.num_videos, "repeats": args.repeats,
                   "naive_videos": args.naive_videos, "appearance_dim": config.appearance_dim,
                   "video_feature_dim": config.video_feature_dim, "latent_dim": config.latent_dim,
                   "score_chunk_size": config.score_chunk_size, "quick": args.quick},
        "galleries": rows,
        "skipped": skipped,
        "naive_note": "naive timings are measured on `naive_measured_on_videos` videos and SCALED linearly to N",
        "memory_note": "peak extra resident memory (VmHWM - VmRSS before the call); includes the returned scores",
        "goal": "score within 2x of the bare product time, and >= 100x faster than the naive loop",
        "goal_met": {n: {"within_2x_bare": r["score_over_bare_time"] <= 2.0,
                         "100x_naive_recompute": r["naive_recompute_over_score_time"] >= 100,
                         "100x_naive_cached_loop": r["naive_cached_loop_over_score_time"] >= 100}
                     for n, r in rows.items()},
        "environment": run_environment(load_before),
    }
    write_json(args.output, result)
    print(f"MAP-IVR scoring, Q = {q} queries, h = {h} samples (naive loops scaled from a few videos):")
    print(f"{'N':>8} {'method':<18} {'seconds':>10} {'pairs/s':>12} {'peak MB':>9}")
    for n, row in rows.items():
        for name in runs:
            print(f"{n:>8} {name:<18} {row['seconds_median'][name]:10.3f} {row['pairs_per_second'][name]:12.0f} "
                  f"{row['peak_extra_memory_mb_max'][name]:9.1f}")
        print(f"{'':>8} score/bare {row['score_over_bare_time']:.2f}x (goal <= 2)   naive_recompute/score "
              f"{row['naive_recompute_over_score_time']:.0f}x, naive_cached_loop/score "
              f"{row['naive_cached_loop_over_score_time']:.1f}x (goal >= 100)")
    for skip in skipped:
        print(f"N = {skip['num_videos']:,} skipped: {skip['reason']}")


if __name__ == "__main__":
    main()
