#!/usr/bin/env python
"""Train FashionBERT or MAP-IVR with 🤗 Accelerate, evaluate with the paper's protocol, save a Hub-ready folder.

    python train.py                          # the embedded default: FashionBERT on the synthetic fashion test bed
    python train.py --model_type map_ivr     # MAP-IVR on the synthetic activity test bed
    accelerate launch --multi_gpu --num_processes 2 train.py ...

Shaped like transformers' `*_no_trainer.py` examples: arguments -> accelerator -> data -> model -> preprocessing ->
dataloaders, optimiser, scheduler -> `accelerator.prepare` -> resume -> loop -> evaluate -> save (+ push). What
differs between the two models (flags, defaults, data, model, collator, loss schedule, evaluation, card) lives in
`xmodal.training.fashionbert` and `xmodal.training.map_ivr`; this script picks one and never branches on the type.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from xmodal.hub import create_hub_repo, push_folder_to_hub, save_model_folder
from xmodal.training import (
    ADAM_BETAS,
    DEFAULT_SEED,
    MODEL_TRAINING,
    WEIGHT_DECAY,
    StreamLoader,
    TrainingRun,
    checkpoint_step,
    default_mixed_precision,
    evaluation_split,
    first_rows,
    list_checkpoints,
    load_checkpoint,
    loss_terms,
    optimizer_parameter_groups,
    precision_name,
    refuse_flags,
    resolve_checkpoint,
    save_checkpoint,
    training_device_type,
    validation_split,
)

logger = get_logger(__name__)

# Errors a user can cause from the command line (bad rows, missing columns or files, conflicting flags): one line
# on stderr and exit status 1, unless --debug asks for the traceback.
USER_ERRORS = (ValueError, OSError)
_UNSET = object()  # marks the flags the command line did not give


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage of 70 flags would bury it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def str2bool(value: str) -> bool:
    """argparse type for explicit booleans ("true"/"false"), unlike `type=bool` which treats "False" as true."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description="Train FashionBERT or MAP-IVR with Accelerate. With no arguments: FashionBERT, initialised from "
        "the packaged MiniLM, on the synthetic fashion test bed (about 11 minutes on 2 CPU cores).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_type", choices=sorted(MODEL_TRAINING), default="fashionbert", help="Which model to train.")
    model.add_argument("--model_name_or_path", default=None, help="A saved FashionBERT / MAP-IVR folder or Hub id to continue from (flags that define a new model are then refused). Default: a new model.")

    data = parser.add_argument_group("data (default: the synthetic test bed of --model_type)")
    data.add_argument("--dataset_name", default=None, help="A `datasets` dataset by name or local path.")
    data.add_argument("--dataset_config_name", default=None, help="The configuration name of --dataset_name.")
    data.add_argument("--train_file", default=None, help="A csv/json/parquet training file (images as paths relative to it, or bytes).")
    data.add_argument("--validation_file", default=None, help="A csv/json/parquet evaluation file (with --train_file).")
    data.add_argument("--on_bad_rows", choices=["raise", "skip"], default="raise", help="What to do with undecodable or invalid rows of real data.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Truncate the training set (debugging, quick runs).")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Truncate the evaluation set.")
    data.add_argument("--streaming", action="store_true", help="Read the training split of --dataset_name / --train_file as a stream (datasets' IterableDataset: never whole on disk), split across processes, shuffled through a buffer, model inputs computed batch by batch; needs --max_train_steps. The evaluation split is loaded as usual.")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000, help="--streaming: rows in the shuffle buffer (each epoch reshuffles with --seed + epoch).")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="--streaming: DataLoader worker processes that decode images and compute the model inputs (0: the main process, on its device; N: N CPU workers).")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default=None, help="Where checkpoints and the final Hub-ready folder go. Default: outputs/<model_type>.")
    train.add_argument("--per_device_train_batch_size", type=int, default=None, help="Examples per device and step (FashionBERT: aligned pairs, plus one negative each). Default: 16 (FashionBERT), 64 (MAP-IVR).")
    train.add_argument("--learning_rate", type=float, default=None, help="Peak learning rate. FashionBERT: recipe (quick 1e-4, paper 2e-5); MAP-IVR: 1e-3.")
    train.add_argument("--adam_beta1", type=float, default=ADAM_BETAS[0], help="Adam beta1 (paper: 0.95).")
    train.add_argument("--adam_beta2", type=float, default=ADAM_BETAS[1], help="Adam beta2 (paper: 0.999).")
    train.add_argument("--weight_decay", type=float, default=WEIGHT_DECAY, help="Weight decay (paper: 1e-4).")
    train.add_argument("--num_train_epochs", type=int, default=None, help="Epochs. FashionBERT: recipe (paper 10; quick trains 150 steps unless epochs are given); MAP-IVR: 30.")
    train.add_argument("--max_train_steps", type=int, default=None, help="Total optimisation steps (instead of --num_train_epochs).")
    train.add_argument("--max_train_minutes", type=float, default=None, help="Stop training after this many minutes (FashionBERT recipe: quick 7, paper none); evaluation and saving follow.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimisation step.")
    train.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear", choices=list(SchedulerType), help="Learning-rate schedule after warmup (paper: linear decay).")
    train.add_argument("--num_warmup_steps", type=int, default=None, help="Learning-rate warmup steps. Default: FashionBERT's recipe (quick 10%% of training, paper 5000); MAP-IVR 10%% of training.")
    train.add_argument("--mixed_precision", choices=["auto", "no", "fp16", "bf16"], default="auto", help="Training (and evaluation) precision, as accelerate's: 'auto' = bf16 autocast where the device computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX-512-BF16 or AMX), float32 ('no') elsewhere; under `accelerate launch`, auto leaves the launcher's setting. 'no' or 'bf16' forces one.")
    train.add_argument("--seed", type=int, default=DEFAULT_SEED, help="Seed of everything: data, model init, data order, masks, negatives.")
    train.add_argument("--gradient_checkpointing", action="store_true", help="Recompute activations in backward to save memory (models that support it).")
    train.add_argument("--checkpointing_steps", default=None, help="Save the training state every N steps ('200'), or 'epoch'. A final checkpoint is always written.")
    train.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep only the newest N checkpoints.")
    train.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder (output_dir/step_N) or 'latest'.")
    train.add_argument("--logging_steps", type=int, default=10, help="Log losses (and task weights) every N steps.")
    train.add_argument("--with_tracking", action="store_true", help="Log to the trackers of --report_to (TensorBoard works offline).")
    train.add_argument("--report_to", default="tensorboard", help="Trackers for --with_tracking: 'tensorboard', 'wandb', 'all'...")
    train.add_argument("--debug", action="store_true", help="Show the Python traceback of an error instead of its one-line message.")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--do_eval", type=str2bool, default=True, help="Evaluate with the paper's protocol after training.")
    evaluation.add_argument("--per_device_eval_batch_size", type=int, default=None, help="Pairs (FashionBERT, default 64) or gallery videos (MAP-IVR, default: the config's chunk) per scoring batch.")
    evaluation.add_argument("--save_figures", type=str2bool, default=True, help="Save the loss curves (FashionBERT: also retrieval grids and task weights) as PNGs shown in the model card.")

    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final folder to the Hub (honours HF_ENDPOINT).")
    hub.add_argument("--hub_model_id", default=None, help="Repository to push to (default: the output folder's name).")
    hub.add_argument("--hub_token", default=None, help="Token for pushing (default: the logged-in one).")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the repository as private.")
    hub.add_argument("--push_checkpoints", action="store_true", help="Also upload each checkpoint under checkpoints/.")

    for training in MODEL_TRAINING.values():
        training.add_arguments(parser)
    return parser


def model_flags() -> dict[str, set[str]]:
    """The flags each model type adds (its `add_arguments`), by model type."""
    return {
        model_type: {action.dest for action in training.add_arguments(argparse.ArgumentParser(add_help=False))}
        for model_type, training in MODEL_TRAINING.items()
    }


def checkpointing_interval(value: str | None) -> int | str | None:
    """--checkpointing_steps as a positive step count, "epoch", or None."""
    if value is None or value == "epoch":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--checkpointing_steps must be a positive integer or 'epoch', got {value!r}")
    return int(value)


def resolve_arguments(args: argparse.Namespace, given: set[str]) -> None:
    """Refuses flags that would be ignored (`ValueError` naming them), then fills the defaults of the model type."""
    training = MODEL_TRAINING[args.model_type]
    for model_type, flags in model_flags().items():
        if model_type != args.model_type:
            refuse_flags(flags, given, f"applies only to --model_type {model_type}")
    conditions = {
        "report_to": (args.with_tracking, "needs --with_tracking"),
        "hub_model_id": (args.push_to_hub, "needs --push_to_hub"),
        "hub_token": (args.push_to_hub, "needs --push_to_hub"),
        "hub_private_repo": (args.push_to_hub, "needs --push_to_hub"),
        "push_checkpoints": (args.push_to_hub, "needs --push_to_hub"),
        "dataset_config_name": (args.dataset_name, "needs --dataset_name"),
        "validation_file": (args.train_file, "needs --train_file"),
        "streaming": (args.dataset_name or args.train_file, "applies only to --dataset_name / --train_file"),
        "shuffle_buffer_size": (args.streaming, "needs --streaming"),
        "dataloader_num_workers": (args.streaming, "needs --streaming (the cached, map-style features need no workers)"),
        "per_device_eval_batch_size": (args.do_eval, "applies only when evaluating (--do_eval true)"),
        "num_train_epochs": ("max_train_steps" not in given, "give --num_train_epochs or --max_train_steps, not both"),
        "on_bad_rows": (args.dataset_name or args.train_file or getattr(args, "fashiongen_h5", None) or getattr(args, "apivr_dir", None),
                        "applies only to real data (the synthetic test bed has no bad rows)"),
    }  # fmt: skip
    for flag, (holds, reason) in conditions.items():
        if not holds:
            refuse_flags((flag,), given, reason)
    if args.streaming:
        refuse_flags(("num_train_epochs",), given, "needs a map-style dataset (a stream's length is unknown): give --max_train_steps with --streaming")
        if args.checkpointing_steps == "epoch":
            raise ValueError("--checkpointing_steps epoch: needs a map-style dataset (each process's stream ends at another step); give a step count with --streaming")
    if args.gradient_checkpointing and not training.MODEL_CLASS.supports_gradient_checkpointing:
        raise ValueError(f"--gradient_checkpointing: {training.MODEL_CLASS.__name__} does not support it")
    for flag in ("max_train_samples", "max_eval_samples", "max_train_steps", "logging_steps", "gradient_accumulation_steps", "shuffle_buffer_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")
    checkpointing_interval(args.checkpointing_steps)  # a bad value stops here, not after the data is loaded
    training.resolve_arguments(args, given)
    if args.streaming and args.max_train_steps is None:
        raise ValueError(f"--streaming: a stream's length is unknown, give --max_train_steps (recipe {getattr(args, 'recipe', None)} counts epochs)")
    args.output_dir = args.output_dir or f"outputs/{args.model_type}"
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with every default resolved; a flag that would be ignored stops here with one line."""
    parser = build_parser()
    defaults = vars(parser.parse_args([]))
    # Parse into a namespace pre-filled with _UNSET: argparse only overwrites what the command line gives.
    args = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(defaults, _UNSET)))
    given = {name for name, value in vars(args).items() if value is not _UNSET}
    for name, value in defaults.items():
        if getattr(args, name) is _UNSET:
            setattr(args, name, value)
    try:
        resolve_arguments(args, given)
    except ValueError as error:
        parser.error(str(error))
    return args


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The Accelerator, logging set up for the main and the other processes."""
    tracking = {"log_with": args.report_to, "project_dir": args.output_dir} if args.with_tracking else {}
    accelerator = Accelerator(
        # Without a GPU, a multi-process launch (`accelerate launch --multi_gpu`, torchrun) runs CPU processes (gloo).
        cpu=training_device_type() == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        **tracking,
    )
    args.mixed_precision = accelerator.mixed_precision  # what runs: the summary and the card say it
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    verbosity = "warning" if accelerator.is_local_main_process else "error"
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()  # one bar per machine (its main process's shard)
    datasets.utils.logging.set_verbosity(getattr(datasets.logging, verbosity.upper()))
    transformers.utils.logging.set_verbosity(getattr(transformers.logging, verbosity.upper()))
    return accelerator


def resolve_mixed_precision(flag: str) -> str | None:
    """accelerate's `mixed_precision` for --mixed_precision: `auto` follows `accelerate launch`'s setting when there is
    one, or the precision this process's accelerate state already has (a second `main()` in one interpreter: the
    state cannot change), with None letting accelerate keep it; else bf16 where this machine's device computes it
    natively."""
    if flag != "auto":
        return flag
    if os.environ.get("ACCELERATE_MIXED_PRECISION") or AcceleratorState._shared_state:
        return None
    return default_mixed_precision(training_device_type())


def check_batches(num_rows: int, args: argparse.Namespace, num_processes: int) -> None:
    """Every process needs at least one full batch (batches are dropped when incomplete, then sharded)."""
    if num_rows // args.per_device_train_batch_size // num_processes == 0:
        raise ValueError(
            f"the training set has {num_rows} rows, fewer than one batch of --per_device_train_batch_size "
            f"{args.per_device_train_batch_size} per process ({num_processes} processes need at least "
            f"{args.per_device_train_batch_size * num_processes} rows): lower the batch size or add rows"
        )


def epoch_batches(
    args: argparse.Namespace, accelerator: Accelerator, train_dataloader: DataLoader | StreamLoader, completed_steps: int
) -> Iterator[Iterable[dict]]:
    """The batches of each epoch left to train, the first one after the `completed_steps` already trained."""
    if isinstance(train_dataloader, StreamLoader):  # one endless iterable: epochs differ between processes
        yield train_dataloader.batches(completed_steps * args.gradient_accumulation_steps * args.per_device_train_batch_size)
        return
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    starting_epoch, resume_step = divmod(completed_steps, updates_per_epoch)
    for epoch in range(starting_epoch, args.num_train_epochs):
        train_dataloader.set_epoch(epoch)
        skip = resume_step * args.gradient_accumulation_steps if epoch == starting_epoch else 0
        yield accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader


def train(
    args: argparse.Namespace, accelerator: Accelerator, training: ModuleType, model: torch.nn.Module,
    optimizer: torch.optim.Optimizer, lr_scheduler, train_dataloader: DataLoader | StreamLoader, completed_steps: int,
) -> tuple[int, list[dict], float, str | None]:
    """
    The loop: steps until --max_train_steps or --max_train_minutes; returns steps done, the log, the minutes and why
    it stopped before --max_train_steps (None when it did not).
    """
    checkpointing_steps = checkpointing_interval(args.checkpointing_steps)
    progress_bar = tqdm(range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process, desc="Training")
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    running_steps, started, out_of_time = 0, time.monotonic(), False
    for batches in epoch_batches(args, accelerator, train_dataloader, completed_steps):
        if completed_steps >= args.max_train_steps or out_of_time:  # resumed from the last step's checkpoint, or time is up
            break
        model.train()
        for batch in batches:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss, task_weights = training.training_loss(args, outputs, completed_steps)
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            for name, value in loss_terms(outputs, loss, task_weights).items():
                running[name] = running.get(name, 0.0) + value / args.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            running_steps += 1
            progress_bar.update(1)
            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
                # Averaged over the logging window and over processes: the curve of the global batch.
                names = sorted(running)
                means = accelerator.reduce(torch.tensor([running[k] / running_steps for k in names], device=accelerator.device), reduction="mean")
                logged = {**dict(zip(names, means.tolist())), "lr": lr_scheduler.get_last_lr()[0]}
                running, running_steps = {}, 0
                history.append({"step": completed_steps, **logged})
                progress_bar.set_postfix({k: f"{v:.3f}" for k, v in logged.items() if k in ("loss", "tia_loss", "weight_tia")})
                if args.with_tracking:
                    accelerator.log(logged, step=completed_steps)
            if isinstance(checkpointing_steps, int) and completed_steps % checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, completed_steps, args.checkpoints_total_limit)
            timed_out = args.max_train_minutes is not None and time.monotonic() - started > 60 * args.max_train_minutes
            out_of_time = bool(accelerator.gather(torch.tensor([timed_out], device=accelerator.device)).any())
            if completed_steps >= args.max_train_steps or out_of_time:
                break
        if checkpointing_steps == "epoch":
            save_checkpoint(accelerator, args.output_dir, completed_steps, args.checkpoints_total_limit)
    progress_bar.close()
    stopped_early = None
    if out_of_time and completed_steps < args.max_train_steps:
        stopped_early = f"--max_train_minutes {args.max_train_minutes:g} ended training after {completed_steps} of {args.max_train_steps} steps"
        logger.warning(f"Stopped early: {stopped_early}")
    return completed_steps, history, (time.monotonic() - started) / 60, stopped_early


def finish(
    args: argparse.Namespace, accelerator: Accelerator, training: ModuleType, model: torch.nn.Module, processor,
    eval_dataset: datasets.Dataset, eval_rows: datasets.Dataset, validation_rows: datasets.Dataset | None, run: TrainingRun,
) -> dict:
    """
    On the main process: evaluation (in the training precision), figures, the Hub-ready folder with its card, the
    history, the push.
    """
    model.eval()
    # Scored in the training's precision (`scoring_precision`), which evaluate passes to the protocol.
    results = training.evaluate(args, model, processor, eval_dataset, validation_rows) if args.do_eval else {}
    if args.push_to_hub:  # the card's loading snippet needs the full `namespace/name`
        args.hub_model_id = create_hub_repo(args.hub_model_id, token=args.hub_token, private=args.hub_private_repo or None)
    figures = []
    if args.save_figures:
        with accelerator.autocast():
            figures = training.save_figures(args, model, processor, eval_rows, run.history, Path(args.output_dir) / "figures")
    final_dir = Path(args.output_dir) / "final"
    save_model_folder(
        final_dir, model, processor, eval_results=results or None, model_card=training.model_card(args, model, results, run, figures),
        figures={figure["file"]: figure["path"] for figure in figures},
    )
    (final_dir.parent / "train_history.json").write_text(json.dumps(run.history, indent=1) + "\n")
    if args.push_to_hub:
        push_folder_to_hub(final_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo or None)
        if args.push_checkpoints:
            for checkpoint in list_checkpoints(args.output_dir):
                push_folder_to_hub(checkpoint, args.hub_model_id, token=args.hub_token, path_in_repo=f"checkpoints/{checkpoint.name}")
    return results


def print_summary(args: argparse.Namespace, training: ModuleType, results: dict, run: TrainingRun, total_minutes: float) -> None:
    """One screen: what ran, how long, the final losses and the protocol's numbers."""
    last = run.history[-1] if run.history else {}
    tasks = [t for t in ("mlm", "mpm", "tia", "itc") if f"weight_{t}" in last]
    lines = [
        "",
        f"==== {training.run_title(args)} ====",
        f"steps: {run.steps}   training: {run.train_minutes:.1f} min   total: {total_minutes:.1f} min   precision: {precision_name(args.mixed_precision)}",
        *([f"STOPPED EARLY: {run.stopped_early}"] if run.stopped_early else []),
        "final losses: " + "  ".join(f"{k}={v:.4f}" for k, v in last.items() if k.endswith("loss")),
        *([f"task weights ({', '.join(tasks)}): " + ", ".join(f"{last[f'weight_{t}']:.3f}" for t in tasks)] if tasks else []),
        *training.summary_lines(args, results),
        f"saved: {Path(args.output_dir) / 'final'}",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    training = MODEL_TRAINING[args.model_type]
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    started = time.monotonic()
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None
    completed_steps = checkpoint_step(checkpoint) if checkpoint else 0

    # Data, model and preprocessing. The main process loads first so the others reuse its `datasets` cache; then
    # every process computes its shard of the model inputs and reads the others' from the cache. The checks run on
    # every process, outside those blocks, so that all of them stop with the same line.
    with accelerator.main_process_first():
        raw, dataset_description = training.load_splits(args)
    train_rows = first_rows(raw["train"], args.max_train_samples)
    eval_rows = first_rows(raw[evaluation_split(raw)], args.max_eval_samples)
    validation_rows = raw[validation_split(raw)] if validation_split(raw) else None  # post-training choices
    if not args.streaming:  # a stream's length is unknown: StreamLoader stops with the same line on an empty epoch
        check_batches(len(train_rows), args, accelerator.num_processes)
    with accelerator.main_process_first():
        model, processor, new_parameters = training.build_model(args, train_rows)
    train_dataset, eval_dataset = training.prepare_datasets(args, model, processor, train_rows, eval_rows, accelerator)
    training.check_before_training(args, eval_dataset)
    training.connect_processes(model, accelerator)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()

    collator = training.build_collator(args, model, processor, completed_steps)
    if args.streaming:  # this process's part of the stream, collated here and put on the device by the loader
        train_dataloader = StreamLoader(train_dataset, collator, args.per_device_train_batch_size, args.dataloader_num_workers, accelerator.device)
    else:
        train_dataloader = DataLoader(
            train_dataset.with_format("numpy"),
            shuffle=True,
            collate_fn=collator,
            batch_size=args.per_device_train_batch_size,
            drop_last=True,
            generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG (masks, dropout) resumable
        )
    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, args.learning_rate, args.weight_decay, new_parameters, training.new_learning_rate_multiplier(args)),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        fused=True,  # one kernel over all parameters (CPU and CUDA): measured 3-4 % of a FashionBERT step on the CPU
    )
    logger.info(training.describe(args, optimizer))
    if args.max_train_steps is None:  # map-style only (--streaming needs the flag)
        args.max_train_steps = args.num_train_epochs * math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    num_warmup_steps = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(0.1 * args.max_train_steps)
    lr_scheduler = get_scheduler(
        name=args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    if args.streaming:  # already split across processes: accelerate must not shard or dispatch it again
        model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    else:
        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader, lr_scheduler)
        args.num_train_epochs = math.ceil(args.max_train_steps / math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
    if args.with_tracking:
        hparams = {k: (v.value if isinstance(v, SchedulerType) else v) for k, v in vars(args).items()}
        accelerator.init_trackers(f"xmodal_{args.model_type}", {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))})

    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    if args.streaming:
        logger.info(f"  Streamed examples, {accelerator.num_processes} process(es), shuffle buffer {args.shuffle_buffer_size}")
    else:
        logger.info(f"  Num examples = {len(train_dataset)}, num epochs = {args.num_train_epochs}")
    logger.info(f"  Total train batch size (w. parallel & accumulation) = {total_batch_size}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")
    if args.resume_from_checkpoint and checkpoint is None:
        logger.info(f"No checkpoint in {args.output_dir}: starting from scratch")
    if checkpoint is not None:
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        load_checkpoint(accelerator, checkpoint)  # safetensors weights, weights_only=True state pickles
    steps, history, train_minutes, stopped_early = train(args, accelerator, training, model, optimizer, lr_scheduler, train_dataloader, completed_steps)
    save_checkpoint(accelerator, args.output_dir, steps, args.checkpoints_total_limit)

    # Evaluation with the paper's protocol, and the Hub-ready folder.
    accelerator.wait_for_everyone()
    run = TrainingRun(dataset_description, steps, train_minutes, history, synthetic=dataset_description == training.SYNTHETIC_DATASET, stopped_early=stopped_early)
    results: dict = {}
    if accelerator.is_main_process:
        results = finish(args, accelerator, training, accelerator.unwrap_model(model), processor, eval_dataset, eval_rows, validation_rows, run)
        print_summary(args, training, results, run, (time.monotonic() - started) / 60)
    if args.with_tracking:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return {"results": results, "steps": steps, "history": history, "final_dir": str(Path(args.output_dir) / "final")}


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as error:
        if "--debug" in sys.argv[1:]:
            raise
        sys.exit(f"train.py: error: {error}")
