"""Retrieval quality of MAP-IVR on the synthetic activity test bed: scores, sweeps, ablations, a baseline, probes.

Every trained row uses train.py's MAP-IVR budget and optimiser (the defaults of `xmodal.training.map_ivr`:
batch 64, AdamW lr 1e-3, betas (0.95, 0.999), weight decay 1e-4, linear schedule with 10 % warmup, 30 epochs,
drop_last) on the data train.py builds (`make_activity_dataset(num_videos_per_class=40, seed=seed)`: 14 classes,
560 training rows, 560 test rows, every test image a query against all 560 test videos), with one seed per run
seeding the data, the initialisation, the batch order and the motion codes. Per seed:

- full MAP-IVR, evaluated under S_A, S_V and S_all (lambda_v = 0.5, h = 10), and over the grid
  lambda_v in {0, 0.25, 0.5, 0.75, 1} x h in {1, 5, 10, 20} (the same trained model, evaluation only);
- ablations: orth_loss_weight = 0 (no L_orth) and recon_loss_weight = 0 (no L_re), retrained;
- this project's baseline (`DirectBaseline`): image and video features mapped into one space by two MLPs of
  MAP-IVR's encoder size and trained with a supervised InfoNCE loss (same-class pairs in the batch are
  positives), ranked by cosine distance;
- linear probes (`probe_factors` of the test bed) of the video appearance code a^v, the motion code m^v and the
  input v_bar, for the full model, the model trained without L_orth and (as a control) the untrained
  initialisation, plus the mean |cos(m^v, a^v)|: for the seven generator factors on a probing set whose factors
  are all drawn independently (`make_factor_dataset`), and for the class label (and the within-class scene,
  direction and speed) on the test split. The seed notes ask whether m^v is motion and class-independent.

mAP@K uses APIVR's normalisation (by the relevant videos found in the top K; `mean_average_precision_at_k`).
Results are mean +- sample std (ddof = 1) over seeds.

    python bench/quality_map_ivr.py                          # 3 seeds, 30 epochs (~7 min on 2 cores)
    python bench/quality_map_ivr.py --seeds 0 1 2 3 4        # the committed result (~10 min)
    python bench/quality_map_ivr.py --quick                  # 1 seed, 2 epochs, tiny data (CI size, < 1 min)

Writes bench/results/quality_map_ivr.json (`--quick`: quality_map_ivr_quick.json); `--cache_dir` keeps the
rendered datasets (about 50 s per seed) for reruns.
"""

import argparse
import copy
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_scheduler

from xmodal.data import MapIvrCollator
from xmodal.data.activity_sources import activity_arrays
from xmodal.data.activity_synthetic import (
    ACTIVITY_CLASSES,
    FACTOR_COLUMNS,
    make_activity_dataset,
    make_factor_dataset,
    probe_factors,
)
from xmodal.evaluation.activity_retrieval import evaluate_activity_retrieval, mean_average_precision_at_k
from xmodal.map_ivr.modeling_map_ivr import pool_proposals
from xmodal.training import ADAM_BETAS, WEIGHT_DECAY, optimizer_parameter_groups
from xmodal.training import map_ivr as map_ivr_training


KS = (10, 20, 50, 100)
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_SAMPLES = (1, 5, 10, 20)
ABLATIONS = {"no_orth": {"orth_loss_weight": 0.0}, "no_recon": {"recon_loss_weight": 0.0}}
WITHIN_CLASS_FACTORS = ("scene", "direction", "speed")  # vary per instance inside a class


class DirectBaseline(nn.Module):
    """This project's baseline: u and v_bar projected into one space, supervised InfoNCE, ranked by cosine distance.

    Two MLPs of MAP-IVR's encoder shape (`in -> hidden -> out`, ReLU, dropout) embed the image feature and the pooled
    video feature (`pool_proposals`, the same top-k pooling as MAP-IVR) onto the unit sphere. The loss is InfoNCE over
    the batch in both directions where every same-class pair is a positive (SupCon-style: mean over positives of
    -log softmax); no disentangling, no decoder.
    """

    def __init__(self, image_dim: int, video_dim: int, hidden: int = 1024, out: int = 512, dropout: float = 0.1,
                 temperature: float = 0.1, top_k: int = 5):
        super().__init__()

        def mlp(in_features):
            return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))

        self.image_encoder, self.video_encoder = mlp(image_dim), mlp(video_dim)
        self.temperature, self.top_k = temperature, top_k

    def embed_images(self, image_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(image_features), dim=-1)

    def embed_videos(self, video_features, proposal_scores=None, proposal_mask=None) -> torch.Tensor:
        pooled = pool_proposals(video_features, proposal_scores, proposal_mask, top_k=self.top_k)
        return F.normalize(self.video_encoder(pooled), dim=-1)

    def forward(self, image_features, video_features, labels, proposal_scores=None, proposal_mask=None, **kwargs):
        logits = self.embed_images(image_features) @ self.embed_videos(video_features, proposal_scores, proposal_mask).T
        logits = logits / self.temperature
        positive = (labels[:, None] == labels[None, :]).float()

        def supervised_nce(scores):  # mean over each row's positives of -log softmax
            return -((scores.log_softmax(dim=1) * positive).sum(1) / positive.sum(1)).mean()

        return {"loss": 0.5 * (supervised_nce(logits) + supervised_nce(logits.T))}

    @torch.no_grad()
    def distances(self, image_features, video_features, proposal_scores=None, proposal_mask=None) -> torch.Tensor:
        self.eval()
        return 1.0 - self.embed_images(image_features) @ self.embed_videos(video_features, proposal_scores, proposal_mask).T


# ----------------------------------------------------------------------------------------------------------------------
# Training (mirrors train.py's loop without Accelerate: one process, no accumulation)
# ----------------------------------------------------------------------------------------------------------------------


def train_model(model: nn.Module, train_split, feature_extractor, epochs: int, seed: int) -> float:
    """Trains `model` in place with train.py's MAP-IVR optimiser, schedule and batching; returns seconds."""
    started = time.monotonic()
    loader = DataLoader(
        train_split.with_format("numpy"), shuffle=True, collate_fn=MapIvrCollator(feature_extractor),
        batch_size=map_ivr_training.DEFAULT_BATCH_SIZE, drop_last=True, generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, map_ivr_training.DEFAULT_LEARNING_RATE, WEIGHT_DECAY),
        lr=map_ivr_training.DEFAULT_LEARNING_RATE, betas=ADAM_BETAS,
    )
    steps = epochs * len(loader)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=math.ceil(0.1 * steps), num_training_steps=steps)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            loss = model(**batch)["loss"]
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    return time.monotonic() - started


def prepared_arrays(split, feature_extractor) -> dict:
    """A split's features through the fitted feature extractor (as `evaluate_activity_retrieval` does), as tensors."""
    arrays = activity_arrays(split)
    prepared = feature_extractor(
        image_features=arrays["image_features"], video_features=arrays["video_features"],
        proposal_scores=arrays["proposal_scores"], proposal_mask=arrays["proposal_mask"], return_tensors="np",
    )
    out = {k: torch.as_tensor(np.asarray(prepared[k]), dtype=torch.float32) for k in ("image_features", "video_features")}
    for key, dtype in (("proposal_scores", torch.float32), ("proposal_mask", torch.bool)):
        out[key] = None if prepared.get(key) is None else torch.as_tensor(np.asarray(prepared[key])).to(dtype)
    out["labels"] = arrays["labels"]
    return out


def evaluate_baseline(model: DirectBaseline, test_split, feature_extractor) -> dict:
    data = prepared_arrays(test_split, feature_extractor)
    is_query = np.asarray(test_split["is_query"], dtype=bool)
    distances = model.distances(data["image_features"][is_query], data["video_features"], data["proposal_scores"],
                                data["proposal_mask"])
    metrics = mean_average_precision_at_k(distances, data["labels"][is_query], data["labels"], KS)
    return {k: v for k, v in metrics.items() if k.startswith("mAP@")}


def maps(result: dict, score: str) -> dict:
    return {f"mAP@{k}": result[f"{score}/mAP@{k}"] for k in KS}


# ----------------------------------------------------------------------------------------------------------------------
# Probes of the trained codes
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def video_codes(model, data: dict) -> dict[str, np.ndarray]:
    """v_bar (the input), a^v = E_v^ap(v_bar) and m^v = E_v^mo(v_bar) of every row, in eval mode."""
    model.eval()
    video_bar = model.pool_video_features(data["video_features"], data["proposal_scores"], data["proposal_mask"])
    return {"v_bar": video_bar.numpy(), "a_v": model.video_appearance_encoder(video_bar).numpy(),
            "m_v": model.video_motion_encoder(video_bar).numpy()}


def class_accuracy_bound(attributes: tuple[str, ...]) -> float:
    """Best class accuracy from knowing only `attributes` of the class (equal class sizes): groups / classes."""
    groups = {tuple(getattr(c, a) for a in attributes) for c in ACTIVITY_CLASSES}
    return len(groups) / len(ACTIVITY_CLASSES)


def probe_codes(model, feature_extractor, factor_dataset, test_split, seed: int) -> dict:
    factor_data = prepared_arrays(factor_dataset, feature_extractor)
    factor_labels = {name: np.asarray(factor_dataset[name]) for name in FACTOR_COLUMNS}
    factors = {code: probe_factors(features, factor_labels, seed=seed)
               for code, features in video_codes(model, factor_data).items()}
    test_data = prepared_arrays(test_split, feature_extractor)
    test_codes = video_codes(model, test_data)
    test_labels = {"label": test_data["labels"], **{n: np.asarray(test_split[n]) for n in WITHIN_CLASS_FACTORS}}
    within = {code: probe_factors(features, test_labels, seed=seed) for code, features in test_codes.items()}
    cosine = F.cosine_similarity(torch.from_numpy(test_codes["m_v"]), torch.from_numpy(test_codes["a_v"]), dim=-1)
    return {"factor_dataset": factors, "test_split": within, "mean_abs_cos_mv_av": float(cosine.abs().mean())}


# ----------------------------------------------------------------------------------------------------------------------
# One seed, aggregation, main
# ----------------------------------------------------------------------------------------------------------------------


def load_activity(seed: int, videos_per_class: int, cache_dir: str | None):
    from datasets import load_from_disk

    path = Path(cache_dir) / f"activity_v{videos_per_class}_s{seed}" if cache_dir else None
    if path is not None and path.exists():
        return load_from_disk(str(path))
    raw = make_activity_dataset(num_videos_per_class=videos_per_class, seed=seed, show_progress=False)
    if path is not None:
        raw.save_to_disk(str(path))
    return raw


def run_seed(seed: int, args, factor_dataset) -> dict:
    started = time.monotonic()
    raw = load_activity(seed, args.videos_per_class, args.cache_dir)
    train_split, test_split = raw["train"], raw["test"]
    out = {"seed": seed, "data_seconds": time.monotonic() - started, "train_seconds": {}, "rows": {}}

    torch.manual_seed(seed)  # train.py: set_seed(args.seed) before the model is built
    model, feature_extractor = map_ivr_training.new_model(train_split)
    # Control for the probes: the same initialisation, untrained (what random encoders keep of v_bar).
    untrained = copy.deepcopy(model)
    out["train_seconds"]["map_ivr"] = train_model(model, train_split, feature_extractor, args.epochs, seed)
    grid = {}
    for h in NUM_SAMPLES:
        for lam in LAMBDAS:
            result = evaluate_activity_retrieval(model, test_split, num_samples=h, lambda_v=lam, seed=seed,
                                                 feature_extractor=feature_extractor)
            grid[f"h={h},lambda_v={lam}"] = maps(result, "s_all")
            if h == 10 and lam == 0.5:
                for score in ("s_a", "s_v", "s_all"):
                    out["rows"][f"map_ivr/{score}"] = maps(result, score)
    out["grid"] = grid
    out["probes"] = {name: probe_codes(m, feature_extractor, factor_dataset, test_split, seed)
                     for name, m in (("map_ivr", model), ("untrained", untrained))}

    for name, overrides in ABLATIONS.items():
        config = copy.deepcopy(model.config)
        for field, value in overrides.items():
            setattr(config, field, value)
        torch.manual_seed(seed)
        ablated = type(model)(config)
        out["train_seconds"][name] = train_model(ablated, train_split, feature_extractor, args.epochs, seed)
        result = evaluate_activity_retrieval(ablated, test_split, seed=seed, feature_extractor=feature_extractor)
        for score in ("s_a", "s_v", "s_all"):
            out["rows"][f"{name}/{score}"] = maps(result, score)
        if name == "no_orth":  # what L_orth changes in the codes
            out["probes"][name] = probe_codes(ablated, feature_extractor, factor_dataset, test_split, seed)

    torch.manual_seed(seed)
    config = model.config
    baseline = DirectBaseline(config.image_feature_dim, config.video_feature_dim, config.encoder_hidden_sizes[0],
                              config.appearance_dim, config.dropout, top_k=config.proposal_top_k)
    out["train_seconds"]["baseline"] = train_model(baseline, train_split, feature_extractor, args.epochs, seed)
    out["rows"]["baseline/cosine"] = evaluate_baseline(baseline, test_split, feature_extractor)
    out["seconds"] = time.monotonic() - started
    return out


def summary(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}


def aggregate(runs: list[dict]) -> dict:
    def metrics(getter):
        return {f"mAP@{k}": summary([getter(run)[f"mAP@{k}"] for run in runs]) for k in KS}

    rows = {name: metrics(lambda run, name=name: run["rows"][name]) for name in runs[0]["rows"]}
    grid = {key: metrics(lambda run, key=key: run["grid"][key]) for key in runs[0]["grid"]}
    probes = {}
    for model, parts in runs[0]["probes"].items():
        probes[model] = {}
        for part, codes in parts.items():
            if not isinstance(codes, dict):
                probes[model][part] = summary([run["probes"][model][part] for run in runs])
                continue
            probes[model][part] = {
                code: {factor: {"accuracy": summary([run["probes"][model][part][code][factor]["accuracy"] for run in runs]),
                                "chance": summary([run["probes"][model][part][code][factor]["chance"] for run in runs])["mean"],
                                "uniform_chance": values["uniform_chance"]}
                       for factor, values in factors.items()}
                for code, factors in codes.items()
            }
    probes["class_accuracy_bounds"] = {"motion_only": class_accuracy_bound(("motion",)),
                                       "appearance_only": class_accuracy_bound(("shape", "colour", "texture"))}
    return {"rows": rows, "grid": grid, "probes": probes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="One full run per seed.")
    parser.add_argument("--epochs", type=int, default=30, help="Training epochs of every trained row (train.py: 30).")
    parser.add_argument("--videos_per_class", type=int, default=40, help="Train (and test) videos per class (train.py: 40).")
    parser.add_argument("--probe_samples", type=int, default=600, help="Rows of the independent-factor probing set.")
    parser.add_argument("--cache_dir", default=None, help="Keep rendered datasets here and reuse them.")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 10 videos per class, 120 probe rows.")
    parser.add_argument("--output", default=None, help="JSON path (default bench/results/quality_map_ivr[_quick].json).")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.videos_per_class, args.probe_samples = args.seeds[:1], 2, 10, 120
    output = args.output or f"bench/results/quality_map_ivr{'_quick' if args.quick else ''}.json"
    torch.set_num_threads(1)  # tiny models; the machine is shared
    load_before = os.getloadavg()
    started = time.monotonic()

    factor_dataset = make_factor_dataset(num_samples=args.probe_samples, seed=1000, show_progress=False)
    # activity_arrays needs a label column; the probing set has none (its labels are the factor columns).
    factor_dataset = factor_dataset.add_column("label", [0] * len(factor_dataset))
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args, factor_dataset))
        print(f"seed {seed}: {runs[-1]['seconds']:.0f} s; " + ", ".join(
            f"{name} {m['mAP@100']:.3f}" for name, m in runs[-1]["rows"].items()), flush=True)

    result = {
        "config": {"quick": args.quick, "seeds": args.seeds, "epochs": args.epochs, "train_py_default_epochs": map_ivr_training.DEFAULT_EPOCHS,
                   "batch_size": map_ivr_training.DEFAULT_BATCH_SIZE, "learning_rate": map_ivr_training.DEFAULT_LEARNING_RATE,
                   "videos_per_class": args.videos_per_class, "num_classes": len(ACTIVITY_CLASSES),
                   "probe_samples": args.probe_samples, "probe_seed": 1000, "lambdas": list(LAMBDAS),
                   "num_samples": list(NUM_SAMPLES), "default_lambda_v": 0.5, "default_num_samples": 10,
                   "ks": list(KS), "normalization": "hits", "baseline_temperature": 0.1},
        **aggregate(runs),
        "per_seed": runs,
        "seconds": time.monotonic() - started,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())},
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {output} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
