"""What the two model builders share: joint multi-task training, seeded and resumable.

The builders are the only places in the project that train. Each step draws a task with probability
proportional to the square root of its training-set size and the next batch of that task (consecutive slices of
a per-epoch seeded shuffle), with AdamW, gradient clipping and linear warm-up and decay. The state is saved every
``checkpoint_every`` steps under ``work_dir``; a re-run continues from it (draws depend only on the seed and the
step), and one that finds the run finished trains nothing.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def batch_for(task: str, examples: list, drawn: int, batch_size: int, seed: int):
    """The ``drawn``-th batch of ``task``: consecutive slices of a per-epoch seeded shuffle."""
    per_epoch = max(1, len(examples) // batch_size)
    epoch, position = divmod(drawn, per_epoch)
    order = list(range(len(examples)))
    random.Random(f"{seed}-{task}-{epoch}").shuffle(order)
    return [examples[i] for i in order[position * batch_size : (position + 1) * batch_size]]


def save_state(work: Path, tensors: dict[str, torch.Tensor], optimizer, progress: dict) -> None:
    """The trained weights, optimizer and progress, replacing the previous checkpoint whole."""
    tmp = work.with_name(work.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # our own file, read back with weights_only=True
    (tmp / "progress.json").write_text(json.dumps(progress))
    shutil.rmtree(work, ignore_errors=True)
    tmp.rename(work)


def train_jointly(
    data: dict[str, list],
    loss_of: Callable[[str, list], torch.Tensor],
    model: nn.Module,
    state: Callable[[], dict[str, torch.Tensor]],
    restore: Callable[[dict[str, torch.Tensor]], object],
    optimizer: torch.optim.Optimizer,
    args: Namespace,
) -> dict:
    """Train ``model``'s trainable parameters on ``loss_of(task, examples)`` for ``args.steps`` steps (resuming
    from ``args.work_dir``); ``state``/``restore`` give and take the weights a checkpoint holds. Returns the
    progress: steps, batches drawn per task, seconds, smoothed loss per task, peak resident memory."""
    progress = {"step": 0, "drawn": dict.fromkeys(data, 0), "seconds": 0.0, "loss": {}}
    if (args.work_dir / "progress.json").is_file():
        restore(load_file(str(args.work_dir / "model.safetensors")))
        optimizer.load_state_dict(torch.load(args.work_dir / "optimizer.pt", weights_only=True))
        progress = json.loads((args.work_dir / "progress.json").read_text())
        print(f"resuming at step {progress['step']}", flush=True)
    warmup = max(1, int(args.warmup * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / max(1, args.steps - warmup))),
        last_epoch=progress["step"] - 1,
    )
    tasks = sorted(data)
    weights = [math.sqrt(len(data[t])) for t in tasks]
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter() - progress["seconds"]
    while progress["step"] < args.steps:
        step = progress["step"]
        task = random.Random(f"{args.seed}-step-{step}").choices(tasks, weights)[0]
        examples = batch_for(task, data[task], progress["drawn"][task], args.batch_size, args.seed)
        progress["drawn"][task] += 1
        loss = loss_of(task, examples)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        progress["step"] = step + 1
        value = loss.item()
        progress["loss"][task] = 0.9 * progress["loss"].get(task, value) + 0.1 * value
        progress["seconds"] = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        progress["peak_memory_mb"] = max(progress.get("peak_memory_mb", 0.0), peak)
        if progress["step"] % args.checkpoint_every == 0 or progress["step"] == args.steps:
            save_state(args.work_dir, state(), optimizer, progress)
            losses = " ".join(f"{t}={v:.3f}" for t, v in sorted(progress["loss"].items()))
            print(f"step {progress['step']}/{args.steps} {progress['seconds']:.0f}s loss {losses}", flush=True)
    return progress
