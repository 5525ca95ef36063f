"""One training loop for both models, on Hugging Face Accelerate.

``accelerate launch -m training.cli ...`` on several GPUs or nodes runs this unchanged:
Accelerate places the model, shards the batches and syncs gradients; evaluation runs on
every process over the same validation data, so early-stopping decisions agree.
The best epoch by the validation metric is kept (higher is better), and training stops
after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo'd key is an error, not a silent default
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=3e-5, gt=0)
    #: The freshly initialised heads learn faster than the pretrained encoder.
    head_learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    patience: int = Field(default=2, ge=1)
    seed: int = 0


@dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def is_main_process() -> bool:
    """True in a plain run and in the first process of an ``accelerate launch``: only it writes files."""
    from accelerate import PartialState

    return PartialState().is_main_process


def wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    module: nn.Module,
    items: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    loss_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    metric: str,
    config: FitConfig,
    *,
    description: str = "training",
    progress: bool = True,
) -> FitResult:
    """Train ``module`` in place; on return it holds the weights of the best epoch."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if not items:
        raise ValueError(f"{description}: no training examples")
    seed_everything(config.seed)
    # Encoders loaded with AutoModel carry a pooler our heads do not use (they pool the
    # hidden states themselves); DDP must be told those parameters get no gradient.
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    head_params = [p for n, p in module.named_parameters() if not n.startswith("encoder.")]
    encoder_params = [p for n, p in module.named_parameters() if n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.learning_rate},
            {"params": head_params, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        list(items), batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator
    )
    model, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    if accelerator.is_main_process and progress:
        tqdm.write(f"{description}: {len(items)} examples, {accelerator.num_processes} process(es), device {accelerator.device}")
    best_metric, best_epoch, best_state = -float("inf"), -1, None
    history: list[dict[str, float]] = []
    stale = 0
    for epoch in range(config.epochs):
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"{description} epoch {epoch + 1}/{config.epochs}", disable=not progress or not accelerator.is_main_process)
        for batch in bar:
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        model.eval()
        with torch.no_grad():
            scores = evaluate(accelerator.unwrap_model(model))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **scores}
        history.append(record)
        if accelerator.is_main_process and progress:
            tqdm.write(f"{description} epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        if scores[metric] > best_metric:
            best_metric, best_epoch, stale = scores[metric], epoch + 1, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()})
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return FitResult(best_metric=best_metric, best_epoch=best_epoch, history=history)
