"""Markdown tables from the JSON results in bench/results/ (for the README).

    python bench/render_tables.py                  # prints the tables and writes bench/results/TABLES.md
"""

import argparse
import json
from pathlib import Path


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def load_note(result: dict) -> str:
    env = result.get("environment", {})
    before, after = env.get("loadavg_before"), env.get("loadavg_after")
    load = f", load average {before[0]:.1f} -> {after[0]:.1f}" if before and after else ""
    quick = " `--quick` run (tiny sizes): not representative." if result.get("config", {}).get("quick") else ""
    return f"_torch {env.get('torch', '?')}, {env.get('threads', '?')} CPU thread(s){load}.{quick}_"


def goal(met: bool) -> str:
    return "met" if met else "**not met**"


def random_scorers(r: dict) -> str:
    rows = [[f"fashion {k}", f"{v:.3f}"] for k, v in sorted(r["fashion"].items())]
    rows += [[f"activity {k}", f"{v:.4f}"] for k, v in sorted(r["activity"].items())]
    return "### Chance level (random scorers)\n\n" + table(["metric", "random"], rows)


def probe_activity_descriptor(r: dict) -> str:
    video, image = r["video_features"], r["image_features"]
    rows = [[f, f"{video[f]['accuracy']:.3f}", f"{image[f]['accuracy']:.3f}", f"{video[f]['chance']:.3f}"]
            for f in video]
    return "### Linear probes of the MAP-IVR descriptor\n\n" + table(["factor", "video", "image", "chance"], rows)


def speed_fashionbert(r: dict) -> str:
    c = r["config"]
    rows = [[name, m["sequence_length"], f"{m['seconds_per_step_median'] * 1000:.0f}", f"{m['pairs_per_second']:.1f}",
             f"{m['tokens_per_second']:.0f}", m["attn_implementation"]] for name, m in r["models"].items()]
    ratio_bert = r["ratio_fashionbert_over_bert_pairs_per_second"]
    ratio_vilt = r["ratio_fashionbert_over_vilt_pairs_per_second"]
    return (
        f"### Training throughput (forward + backward), {c.get('attn_implementation', 'sdpa')} attention for "
        f"FashionBERT and BERT, hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
        f"batch {c['batch_size']}, {c['text_length']} text tokens + {c['num_patches']} patches\n\n"
        + table(["model", "tokens", "ms / step", "pairs / s", "tokens / s", "attention"], rows)
        + f"\n\nFashionBERT / BERT: **{ratio_bert:.2f}x** (goal >= 0.95: {goal(r['goal_met']['vs_bert'])}); "
        f"FashionBERT / ViLT: **{ratio_vilt:.2f}x** (goal > 1: {goal(r['goal_met']['vs_vilt'])}). {load_note(r)}"
    )


def speed_patch_features(r: dict) -> str:
    c = r["config"]
    rows = [[mode, f"{r['images_per_second'][mode]:.3f}", " x ".join(map(str, r["feature_shape_per_image"][mode]))]
            for mode in ("grid", "crop")]
    return (
        f"### Patch features, ResNet-50, {c['image_size']}px images, 8x8 patches (crops at {c['patch_crop_size']}px)"
        "\n\n" + table(["patch_feature_mode", "images / s", "features per image"], rows)
        + f"\n\ngrid / crop: **{r['ratio_grid_over_crop']:.1f}x** (goal >= 30x: {goal(r['goal_met'])}). "
        f"{load_note(r)}"
    )


def speed_data_parallel(r: dict) -> str:
    rows = [[n, f"{r['extraction_seconds'][n]:.1f}", f"{r['images_per_second'][n]:.2f}"] for n in ("1", "2")]
    t = r["task_weight_reduction"]
    return (
        f"### Data parallelism on CPU (gloo): patch features of {r['images']} images shared by the processes, and eq. 6's "
        "statistics reduced across them\n\n" + table(["processes", "extraction (s)", "images / s"], rows)
        + f"\n\n2 / 1: **{r['speedup_2_vs_1']:.2f}x**. Training step, 2 processes: {t['ms_per_step_local']:.0f} ms without "
        f"the reduction, {t['ms_per_step_reduced']:.0f} ms with it ({t['extra_ms_per_step']:+.1f} ms, "
        f"{t['extra_percent']:+.1f} %); the all-reduce alone {t['all_reduce_ms']:.2f} ms. {load_note(r)}"
    )


def speed_retrieval_protocol(r: dict) -> str:
    rows = []
    for name, s in r["sizes"].items():
        m, e = s["measured"], s["extrapolated_full_protocol"]
        rows.append([name, f"{m['protocol_pairs_per_second']:.2f}", f"{m['naive_pairs_per_second']:.2f}",
                     f"{m['speedup_protocol_over_naive']:.1f}x", f"{e['cached_hours']:.1f}", f"{e['naive_hours']:.1f}"])
    c = r["config"]
    return (
        f"### Retrieval protocol speed ({c['num_products']} products, {c['num_queries']} queries x "
        f"1 + {c['num_negatives']} candidates x 2 directions; ResNet-50 grid patch features)\n\n"
        + table(["text encoder", "protocol pairs / s", "naive pairs / s", "speed-up",
                 "full protocol, cached (h, extrapolated)", "full protocol, naive (h, extrapolated)"], rows)
        + f"\n\nFull protocol = 202,000 pairs + {c['full_num_products']:,} images, **extrapolated** from the measured "
        f"rates on the same CPU, not measured. {load_note(r)}"
    )


def speed_map_ivr_gallery(r: dict) -> str:
    c = r["config"]
    rows = []
    for n, g in r["galleries"].items():
        s, mem = g["seconds_median"], g["peak_extra_memory_mb_max"]
        rows.append([f"{int(n):,}", f"{s['score']:.3f}", f"{s['bare_product']:.3f}", f"{s['naive_recompute']:.0f}",
                     f"{s['naive_cached_loop']:.2f}", f"{g['score_over_bare_time']:.2f}x",
                     f"{g['naive_recompute_over_score_time']:.0f}x", f"{g['naive_cached_loop_over_score_time']:.1f}x",
                     f"{mem['score']:.0f}", f"{mem['bare_product']:.0f}"])
    skipped = "".join(f"\n\nN = {s['num_videos']:,} not run: {s['reason']}." for s in r.get("skipped", []))
    return (
        f"### MAP-IVR gallery scoring, Q = {c['num_queries']} queries, h = {c['num_samples']} samples\n\n"
        + table(["N videos", "score (s)", "bare mm (s)", "naive recompute (s, scaled)", "naive cached loop (s, scaled)",
                 "score / bare", "naive recompute / score", "naive loop / score", "score peak MB",
                 "bare peak MB"], rows)
        + f"\n\nNaive loops timed on {c['naive_videos']} videos and scaled linearly to N. Goals: score within 2x of "
        f"the bare product, >= 100x the naive loop.{skipped} {load_note(r)}"
    )


def quality_map_ivr(r: dict) -> str:
    c = r["config"]
    ks = c["ks"]

    def cell(summary: dict) -> str:
        return f"{summary['mean']:.3f} ± {summary['std']:.3f}"

    names = {"map_ivr": "MAP-IVR", "no_orth": "MAP-IVR without L_orth", "no_recon": "MAP-IVR without L_re",
             "baseline": "baseline: one space, supervised InfoNCE"}
    scores = {"s_a": "S_A", "s_v": "S_V", "s_all": "S_all", "cosine": "cosine distance"}
    order = [f"{m}/{s}" for m in ("map_ivr", "no_orth", "no_recon") for s in ("s_a", "s_v", "s_all")]
    rows = []
    for key in sorted(r["rows"], key=lambda k: order.index(k) if k in order else len(order)):
        metrics = r["rows"][key]
        model, score = key.split("/")
        rows.append([names.get(model, model), scores.get(score, score)] + [cell(metrics[f"mAP@{k}"]) for k in ks])
    budget = (f"{len(c['seeds'])} seed(s) {c['seeds']}, {c['epochs']} epochs (train.py: {c['train_py_default_epochs']}), "
              f"batch {c['batch_size']}, lr {c['learning_rate']}, {c['num_classes']} classes x {c['videos_per_class']} "
              "videos per split")
    parts = [
        f"### MAP-IVR retrieval quality, synthetic activity test bed ({budget}; mean ± std over seeds; "
        f"S_all with λ_v = {c['default_lambda_v']}, h = {c['default_num_samples']})\n\n"
        + table(["model", "score"] + [f"mAP@{k}" for k in ks], rows)
    ]
    for k in (ks[0], ks[-1]):
        grid_rows = [[f"h = {h}"] + [cell(r["grid"][f"h={h},lambda_v={lam}"][f"mAP@{k}"]) for lam in c["lambdas"]]
                     for h in c["num_samples"]]
        parts.append(f"#### S_all mAP@{k} over λ_v and h (full MAP-IVR, evaluation only)\n\n"
                     + table(["h \\ λ_v"] + [str(lam) for lam in c["lambdas"]], grid_rows))
    probes = r["probes"]
    full = probes.get("map_ivr", probes)  # older results hold the full model's probes at the top level
    no_orth = probes.get("no_orth")
    codes = [(full, "v_bar", "v_bar (input)"), (full, "a_v", "a^v"), (full, "m_v", "m^v")]
    if no_orth:
        codes += [(no_orth, "a_v", "a^v, no L_orth"), (no_orth, "m_v", "m^v, no L_orth")]
    if probes.get("untrained"):
        codes.append((probes["untrained"], "m_v", "m^v, untrained init"))
    for part, title in (("factor_dataset", f"generator factors, all drawn independently ({c['probe_samples']} clips, "
                                           "70/30 split)"),
                        ("test_split", "class label and within-class factors, test split (70/30 split)")):
        first = full[part]["v_bar"]
        probe_rows = [[factor] + [cell(source[part][code][factor]["accuracy"]) for source, code, _ in codes]
                      + [f"{first[factor]['chance']:.3f}"] for factor in first]
        parts.append(f"#### Linear probe accuracy of the video codes: {title}\n\n"
                     + table(["factor"] + [name for _, _, name in codes] + ["majority chance"], probe_rows))
    bounds = probes["class_accuracy_bounds"]
    others = [(name, probes[key]) for key, name in (("no_orth", "without L_orth"), ("untrained", "untrained init"))
              if probes.get(key)]
    cosines = cell(full["mean_abs_cos_mv_av"]) + "".join(f"; {name}: {cell(p['mean_abs_cos_mv_av'])}" for name, p in others)
    parts.append(f"Class accuracy reachable from the motion type alone: {bounds['motion_only']:.3f}; from the "
                 f"appearance (shape, colour, texture) alone: {bounds['appearance_only']:.3f}. Mean |cos(m^v, a^v)| "
                 f"on the test split: {cosines}. Baseline: this project's, two MLPs of "
                 f"MAP-IVR's encoder size, InfoNCE with temperature {c['baseline_temperature']}. "
                 f"Total time {r['seconds'] / 60:.1f} min. {load_note(r)}")
    return "\n\n".join(parts)


# The three scores of a FashionBERT row (prefix of its metric keys): the paper's, the first stage's, the product's.
SCORES = (("", "cross-encoder"), ("first_stage/", "first stage"), ("fused/", "fused"))


def quality_fashionbert(r: dict) -> str:
    """FashionBERT's quality table: mean ± std over seeds of Rank@K both ways and the AUC, one line per score."""
    # The CPU step rate decided the steps only in the tables of equal budgets (older runs, and `--budget`).
    budget = "--budget" in r["command"] or len({row["steps"] for row in r["rows"].values()}) > 1
    steps_per_minute = r.get("cpu_timing", {}).get("steps_per_minute", {}) if budget else {}

    def cell(row: dict, metric: str, scale: float = 1.0, digits: int = 1) -> str:
        if metric not in row["mean"]:
            return "-"
        return f"{row['mean'][metric] * scale:.{digits}f} ± {row['std'][metric] * scale:.{digits}f}"

    rows = []
    for key, row in r["rows"].items():
        # Rows that change only losses, heads or schedules step at the default's rate (see the script).
        rate = steps_per_minute.get(row["row"]) or steps_per_minute.get(f"sweep: {row['row']}") or steps_per_minute.get("default")
        baseline = {"dual_encoder": "dual encoder (cosine)", "vilt": "ViLT's score"}.get(row.get("settings", {}).get("model"))
        for prefix, score in SCORES:
            if f"{prefix}image_to_text/R@1" not in row["mean"]:
                continue
            score = baseline or score  # a baseline has one score, under the plain keys
            auc = "tia/auc" if prefix == "" else f"{prefix}auc"
            rows.append([row["row"], row.get("variant", "synthetic"), row["steps"]] + ([f"{rate:.1f}" if rate else "-"] if budget else []) + [score]
                        + [cell(row, f"{prefix}{direction}/R@{k}") for direction in ("image_to_text", "text_to_image") for k in (1, 10)]
                        + [cell(row, auc, digits=3)])
    header = ["row", "test bed", "steps"] + (["CPU steps / min"] if budget else []) + ["score", "i→t R@1", "i→t R@10", "t→i R@1", "t→i R@10", "AUC"]
    env = r.get("environment", {})
    seeds = sorted({seed for row in r["rows"].values() for seed in row["seeds"]})
    return (f"### FashionBERT quality (seeds {', '.join(seeds)}; {env.get('device', '?')}, "
            f"torch {env.get('torch', '?')})\n\n" + table(header, rows)
            + f"\n\n`{r['command']}`" + (f"\n\n{r['note']}" if r.get("note") else "")
            + (f"\n\n{r['note_added']}" if r.get("note_added") else ""))


def quality_fashionbert_timing(r: dict) -> str:
    rows = [[name, f"{seconds:.2f}", f"{r['steps_per_minute'][name]:.1f}"] for name, seconds in r["seconds_per_step"].items()]
    return ("### FashionBERT quality rows: CPU seconds per training step\n\n" + table(["row", "s / step", "steps / min"], rows)
            + f"\n\n`{r['command']}` {load_note(r)}")


def quality_fashionbert_sweep(r: dict) -> str:
    groups: dict = {}
    for result in r["results"]:
        groups.setdefault((result["row"], result["variant"]), []).append(result["metrics"])
    rows = []
    for (name, variant), metrics in groups.items():
        mean = lambda key: sum(m[key] for m in metrics) / len(metrics)  # noqa: E731
        rows.append([name, variant, len(metrics), f"{mean('image_to_text/R@1'):.1f}", f"{mean('text_to_image/R@1'):.1f}",
                     f"{mean('tia/auc'):.3f}"])
    return ("### FashionBERT recipe sweep (validation split; mean over seeds)\n\n"
            + table(["setting", "data", "seeds", "i→t R@1", "t→i R@1", "AUC"], rows) + f"\n\n`{r['command']}`")


def probe_alignment_heads(r: dict) -> str:
    rows = []
    for name, by_steps in r["heads"].items():
        rows.append([name] + [f"{m['auc']:.2f} / {m['t2i_R@1_in_subcategory']:.0f} / {m['i2t_R@1_in_subcategory']:.0f}"
                              for m in by_steps.values()])
    steps = list(next(iter(r["heads"].values())))
    return ("### Alignment heads on the frozen encoder at initialisation (AUC / t→i R@1 / i→t R@1 within the "
            "sub-category, %)\n\n" + table(["head, lr"] + [f"step {k}" for k in steps], rows) + f"\n\n`{r['command']}`")


RENDERERS = {
    "random_scorers": random_scorers,
    "probe_activity_descriptor": probe_activity_descriptor,
    "speed_fashionbert": speed_fashionbert,
    "speed_patch_features": speed_patch_features,
    "speed_data_parallel": speed_data_parallel,
    "speed_retrieval_protocol": speed_retrieval_protocol,
    "speed_map_ivr_gallery": speed_map_ivr_gallery,
    "quality_map_ivr": quality_map_ivr,
    "quality_fashionbert": quality_fashionbert,
    "quality_fashionbert_timing": quality_fashionbert_timing,
    "quality_fashionbert_sweep": quality_fashionbert_sweep,
    "quality_patch_encoders": quality_fashionbert,  # the same table: pixels against the pretrained CNN's rows
    "probe_alignment_heads": probe_alignment_heads,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="bench/results", help="Folder of the JSON results.")
    parser.add_argument("--output", default="bench/results/TABLES.md", help="Markdown file written.")
    args = parser.parse_args()
    sections = []
    for path in sorted(Path(args.results).glob("*.json")):
        # A result saved under another name (e.g. speed_fashionbert_eager.json) uses its script's renderer.
        prefixes = [name for name in RENDERERS if path.stem == name or path.stem.startswith(name + "_")]
        render = RENDERERS[max(prefixes, key=len)] if prefixes else None
        if render is None:
            sections.append(f"### {path.stem}\n\n(no table renderer; see `{path}`)")
            continue
        try:
            sections.append(render(json.loads(path.read_text())))
        except (KeyError, TypeError, IndexError) as err:
            sections.append(f"### {path.stem}\n\n(could not render `{path}`: missing field {err})")
    text = "\n\n".join(sections) + "\n"
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
