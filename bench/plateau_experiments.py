"""Scratch experiments on FashionBERT's alignment plateau (the README's "what was tried"); not part of the package.

Prepares the demo's train/test features once (`--data_dir`), then trains FashionBERT from the packaged MiniLM with
one variant and prints the training TIA loss, a held-out TIA loss/accuracy on 64 test products (+ 64 negatives),
a colour-word grounding check every 50 steps (MLM accuracy on masked colour words with the right image / another
image) and, at the end, Rank@1 on a small protocol (40 queries x 21 candidates). Runs behind the README's claims:

    python bench/plateau_experiments.py --tia_only --std --neg random --steps 100 --name std        # standardised features
    python bench/plateau_experiments.py --freeze --lr 1e-3 --steps 100 --neg random --name frozen  # LLaVA-style warm-up
    python bench/plateau_experiments.py --tia_only --std --neg random --lr 5e-4 --steps 100 --name hilr
    python bench/plateau_experiments.py --tia_only --std --ridge --neg random --steps 100 --name ridge
    python bench/plateau_experiments.py --itc_steps 80 --itc_bs 32 --steps 100 --threads 2 --name itc  # ALBEF-style
    python bench/plateau_experiments.py --tia_only --steps 100 --threads 1 --pool product --name product
"""
import os
import time, argparse
import torch, numpy as np, datasets
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=1e-4); p.add_argument("--std", action="store_true")
p.add_argument("--tia_only", action="store_true"); p.add_argument("--neg", default="subcat")
p.add_argument("--minutes", type=float, default=4); p.add_argument("--pool", default="cls")
p.add_argument("--threads", type=int, default=1); p.add_argument("--bs", type=int, default=16)
p.add_argument("--weighting", default="fixed"); p.add_argument("--nneg", type=int, default=1)
p.add_argument("--mlm", type=float, default=0.15); p.add_argument("--warm", type=int, default=20)
p.add_argument("--steps", type=int, default=0); p.add_argument("--ridge", action="store_true")
p.add_argument("--freeze", action="store_true"); p.add_argument("--newlr", type=float, default=0)
p.add_argument("--itc_steps", type=int, default=0); p.add_argument("--itc_bs", type=int, default=64); p.add_argument("--itc_lr", type=float, default=3e-4)
p.add_argument("--data_dir", default="/tmp/xmodal_plateau_data"); p.add_argument("--layers", type=int, default=6); p.add_argument("--name", default="x")
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
from transformers.utils import logging as hl; hl.set_verbosity_error()
from xmodal.data.fashion_synthetic import make_fashion_dataset
from xmodal.data.preprocessing import add_fashionbert_inputs
from xmodal.training import fashionbert as fb

RECIPE = fb.QUICK_RECIPE  # train.py's default recipe; the [CLS] head unless --pool says otherwise

def demo_model(weighting="gradient"):
    return fb.new_model(fb.packaged_bert(), image_size=RECIPE.image_size, patch_grid=8, max_text_length=RECIPE.max_text_length,
                        patch_encoder_type="pixels", alignment_pooling="cls", task_weighting=weighting)[:2]

def prepare(data_dir):
    """The demo's train/test rows (train.py's synthetic defaults, seed 42) with input_ids and pixel patch features, saved once."""
    if os.path.isdir(os.path.join(data_dir, "test")):
        return
    raw = make_fashion_dataset(fb.SYNTHETIC_NUM_PRODUCTS, fb.SYNTHETIC_VIEWS_PER_PRODUCT, RECIPE.image_size, seed=42)
    model, processor = demo_model()
    for split in ("train", "test"):
        add_fashionbert_inputs(raw[split], processor, model, RECIPE.max_text_length).save_to_disk(os.path.join(data_dir, split))
prepare(a.data_dir)
model, processor = demo_model(a.weighting)
if a.layers < 6:
    model.bert.encoder.layer = model.bert.encoder.layer[:a.layers]; model.config.num_hidden_layers = a.layers
from xmodal.data.collators import FashionBertPretrainingCollator
tr = datasets.load_from_disk(os.path.join(a.data_dir, "train")).with_format("numpy")
te = datasets.load_from_disk(os.path.join(a.data_dir, "test")).with_format("numpy")
feats = np.asarray(tr[:]["patch_features"])
mu = feats.reshape(-1, feats.shape[-1]).mean(0); sd = feats.reshape(-1, feats.shape[-1]).std(0) + 1e-3
mu_t, sd_t = torch.tensor(mu), torch.tensor(sd)
def prep(b):
    if a.std: b["patch_features"] = (b["patch_features"] - mu_t) / sd_t
    if a.tia_only or a.mlm == 0: b.pop("labels", None)
    return b
if a.ridge:
    # closed-form projector warm start: patch features -> mean word embedding of the caption
    E = model.bert.embeddings.word_embeddings.weight.detach()
    special = set(processor.tokenizer.all_special_ids)
    X = torch.tensor(feats, dtype=torch.float32)  # (N, 64, D)
    if a.std: X = (X - mu_t) / sd_t
    T = torch.stack([E[[t for t in ids if t not in special]].mean(0) for ids in tr[:]["input_ids"]])  # (N,H)
    Xf = X.reshape(-1, X.shape[-1]); Tf = T.repeat_interleave(X.shape[1], 0)
    lam = 1e-3 * Xf.shape[0]
    W = torch.linalg.solve(Xf.T @ Xf + lam * torch.eye(Xf.shape[1]), Xf.T @ Tf).T  # (H,D)
    W = W * (model.bert.patch_embeddings.projection.weight.norm() / W.norm())
    with torch.no_grad(): model.bert.patch_embeddings.projection.weight.copy_(W)
    print("ridge init done", W.norm().item(), flush=True)
if a.pool == "product":  # what alignment_pooling="text_patch_product" became (padding included here)
    pooler = model.bert.pooler
    def fwd(hidden):
        text, patches = hidden[:, :-64].mean(1), hidden[:, -64:].mean(1)
        return pooler.activation(pooler.dense(text * patches))
    pooler.forward = fwd
    torch.nn.init.normal_(pooler.dense.weight, std=0.02)
if a.pool == "mean":
    pooler = model.bert.pooler
    def fwd(hidden): return pooler.activation(pooler.dense(hidden.mean(1)))
    pooler.forward = fwd
coll = FashionBertPretrainingCollator(processor.tokenizer, patch_grid=8, mlm_probability=0 if a.tia_only else a.mlm,
    mpm_probability=0 if a.tia_only else 0.1, negatives_per_example=a.nneg)
def rows(ds, idx):
    out = []
    for i in idx:
        r = dict(ds[int(i)])
        if a.neg == "random": r["subcategory"] = None
        out.append(r)
    return out
# held-out: first row of 64 test products
_, first = np.unique(te[:]["product_id"], return_index=True); first = np.sort(first)
g = torch.Generator().manual_seed(1)
evcoll = FashionBertPretrainingCollator(processor.tokenizer, patch_grid=8, mlm_probability=0, mpm_probability=0, generator=g)
evb = prep(evcoll([dict(te[int(i)]) for i in first[:64]])); evb.pop("labels", None)
def held():
    model.eval()
    with torch.no_grad():
        o = model(**{k: v for k, v in evb.items()})
    model.train()
    lab = evb["alignment_labels"]; lg = o.tia_logits
    loss = torch.nn.functional.cross_entropy(lg, lab).item(); acc = (lg.argmax(-1) == lab).float().mean().item()
    return loss, acc
new_names = ("patch_embeddings", "cls.predictions.transform", "cls.predictions.bias", "cls.seq_relationship", "cls.patch_predictions", "pooler")
new_p = [p_ for n, p_ in model.named_parameters() if any(k in n for k in new_names)]
old_p = [p_ for n, p_ in model.named_parameters() if not any(k in n for k in new_names)]
if a.freeze:
    for p_ in old_p: p_.requires_grad_(False)
groups = [{"params": new_p, "lr": a.newlr or a.lr}] + ([] if a.freeze else [{"params": old_p, "lr": a.lr}])
opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.95, 0.999), weight_decay=1e-4)
from xmodal.data.fashion_synthetic import COLOR_PALETTE
colour_ids = {processor.tokenizer.convert_tokens_to_ids(c) for c in COLOR_PALETTE if " " not in c}
def grounding():
    model.eval(); ok = [0, 0]; n = 0
    perm = np.roll(np.arange(64), 7)
    for i in range(64):
        r = te[int(first[i])]; ids = torch.tensor(r["input_ids"]).long().clone()
        pos = [j for j, t in enumerate(ids.tolist()) if t in colour_ids]
        if not pos: continue
        tgt = ids[pos].clone(); ids[pos] = processor.tokenizer.mask_token_id
        for k, img in enumerate((i, int(perm[i]))):
            pf = torch.tensor(te[int(first[img])]["patch_features"])[None]
            if a.std: pf = (pf - mu_t) / sd_t
            with torch.no_grad(): o = model(input_ids=ids[None], patch_features=pf)
            ok[k] += (o.mlm_logits[0, pos].argmax(-1) == tgt).sum().item()
        n += len(pos)
    model.train()
    return ok[0] / n, ok[1] / n
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s+1)/a.warm))
model.train(); t0 = time.monotonic(); step = 0; rng = np.random.default_rng(0)
from transformers.masking_utils import create_bidirectional_mask
def encode_alone(emb, mask):
    m4 = create_bidirectional_mask(config=model.config, inputs_embeds=emb, attention_mask=mask)
    h = model.bert.encoder(emb, attention_mask=m4).last_hidden_state
    w = mask.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(1) / w.sum(1)
if a.itc_steps:
    H = model.config.hidden_size
    t_proj, v_proj = torch.nn.Linear(H, 256), torch.nn.Linear(H, 256)
    log_temp = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    itc_opt = torch.optim.AdamW(list(model.parameters()) + list(t_proj.parameters()) + list(v_proj.parameters()) + [log_temp], lr=a.itc_lr, weight_decay=1e-4)
    itc_coll = FashionBertPretrainingCollator(processor.tokenizer, patch_grid=8, mlm_probability=0, mpm_probability=0, negatives_per_example=0)
    for it in range(a.itc_steps):
        # one row per product in the batch
        idx = rng.choice(len(tr), a.itc_bs * 2, replace=False)
        seen, keep = set(), []
        for i in idx:
            pid = tr[int(i)]["product_id"]
            if pid not in seen: seen.add(pid); keep.append(i)
        keep = keep[: a.itc_bs]
        b = prep(itc_coll(rows(tr, keep)))
        temb = model.bert.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
        t = encode_alone(temb, b["attention_mask"])
        pemb = model.bert.patch_embeddings(b["patch_features"], model.bert.embeddings.token_type_embeddings)
        v = encode_alone(pemb, torch.ones(pemb.shape[:2], dtype=torch.long))
        t = torch.nn.functional.normalize(t_proj(t), dim=-1); v = torch.nn.functional.normalize(v_proj(v), dim=-1)
        logits = log_temp.exp().clamp(max=100) * t @ v.T
        lab = torch.arange(len(t))
        loss = (torch.nn.functional.cross_entropy(logits, lab) + torch.nn.functional.cross_entropy(logits.T, lab)) / 2
        loss.backward(); itc_opt.step(); itc_opt.zero_grad()
        if (it + 1) % 10 == 0:
            acc = (logits.argmax(1) == lab).float().mean().item()
            print(f"itc {it+1} loss {loss.item():.3f} in-batch acc {acc:.2f} (chance {1/len(t):.3f}) t {time.monotonic()-t0:.0f}s", flush=True)
    t0 = time.monotonic()
hist = []
while (step < a.steps) if a.steps else (time.monotonic() - t0 < a.minutes * 60):
    idx = rng.choice(len(tr), a.bs, replace=False)
    b = prep(coll(rows(tr, idx)))
    if a.tia_only:
        o = model(**b); loss = o.tia_loss
    else:
        o = model(**b); loss = o.loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad(); step += 1
    hist.append(o.tia_loss.item())
    if step % 25 == 0:
        hl_, ha = held()
        gt, go = grounding() if step % 50 == 0 else (float("nan"),)*2
        print(f"{a.name} step {step} ground {gt:.2f}/{go:.2f} t {time.monotonic()-t0:.0f}s tia(train25) {np.mean(hist[-25:]):.3f} held {hl_:.3f} acc {ha:.2f}" + ("" if a.tia_only else f" mlm {o.mlm_loss.item():.2f}"), flush=True)
# mini retrieval, 40 queries x 21 candidates
from xmodal.evaluation.fashion_retrieval import build_retrieval_protocol
model.eval()
def score(text_rows, image_rows):
    out = []
    for i in range(0, len(text_rows), 64):
        ex = []
        for t, im in zip(text_rows[i:i+64], image_rows[i:i+64]):
            ex.append({"input_ids": te[int(t)]["input_ids"], "patch_features": te[int(im)]["patch_features"]})
        b = prep(evcoll_plain(ex)); b.pop("labels", None); b.pop("alignment_labels", None); b.pop("mpm_mask", None)
        with torch.no_grad():
            lg = model(**b).tia_logits
        out.append(lg[:, 0] - lg[:, 1])
    return torch.cat(out).numpy()
evcoll_plain = FashionBertPretrainingCollator(processor.tokenizer, patch_grid=8, mlm_probability=0, mpm_probability=0, negatives_per_example=0)
msg = []
for d in ("text_to_image", "image_to_text"):
    pr = build_retrieval_protocol(list(te[:]["product_id"]), list(te[:]["subcategory"]), num_queries=40, num_negatives=20, seed=0, direction=d)
    q = np.repeat(pr.query_rows[:, None], pr.candidate_rows.shape[1], 1).ravel(); c = pr.candidate_rows.ravel()
    sc = score(q, c) if d == "text_to_image" else score(c, q)
    sc = sc.reshape(pr.candidate_rows.shape)
    r1 = (sc[:, 0] > sc[:, 1:].max(1)).mean()
    msg.append(f"{d} R@1 {100*r1:.1f}")
print(a.name, "done steps", step, *msg, flush=True)
