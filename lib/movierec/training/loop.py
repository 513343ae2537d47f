"""The one training function both runners use: epochs, validation, early stopping, test.

Model selection uses validation only (full-ranking NDCG@10); the best weights are restored
and test metrics are computed once, at the end. The runner-specific parts (DDP wrapping,
where checkpoints go, how progress is reported) come in through ``Hooks``.
"""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from movierec.data.columns import TEST, VALID
from movierec.data.dataset import SequenceData
from movierec.evaluation.protocols import rank_users
from movierec.evaluation.report import Metrics, summarize
from movierec.models import (
    SSEPT,
    PopularityModel,
    TrainingBatches,
    bce_loss,
    build_model,
    seen_items_mask,
)
from movierec.training.config import TrainConfig

SELECTION_METRIC = "ndcg@10"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (samplers and negatives take explicit generators)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may still use the global RNG
    torch.manual_seed(seed)


class TrainingObjective(nn.Module):
    """Loss of one batch as a module, so DDP sees the whole computation in ``forward``."""

    def __init__(self, model: SSEPT, loss: str) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's non-padded positions."""
        users, seqs, pos = batch["users"], batch["seqs"], batch["pos"]
        mask = pos != 0
        if self.loss == "bce":
            pos_logits, neg_logits = self.model.training_logits(users, seqs, pos, batch["neg"])
            return bce_loss(pos_logits, neg_logits, mask)
        # Full softmax only at real positions: [N, n_items] instead of [B, L, n_items + 1].
        # index_select (not boolean indexing): its backward is a cheap index_add.
        real = mask.reshape(-1).nonzero().squeeze(1)
        hidden = self.model(users, seqs)
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, real)
        logits = self.model.next_item_logits(rows)
        mode = self.model.config.ce_mask_seen
        if mode != "none":
            seen = seen_items_mask(seqs, pos, real, self.model.n_items, mode)
            # In place: the product's backward needs its inputs, not this output.
            logits = logits.masked_fill_(seen, float("-inf"))
        return F.cross_entropy(logits, pos.reshape(-1)[real] - 1)


class Hooks(Protocol):
    """What a runner provides to ``fit``."""

    rank: int
    world_size: int

    def wrap(self, objective: nn.Module) -> nn.Module:
        """Wrap the objective for distributed training (identity in-process)."""

    def device(self, config: TrainConfig) -> torch.device:
        """The device this worker trains on."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint state to resume from, if any."""

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Called after every epoch with its metrics and the checkpoint state."""


class LocalHooks:
    """In-process runner: optional checkpoint file per run, resumable."""

    rank, world_size = 0, 1

    def __init__(self, checkpoint_dir: Path | None = None, resume: bool = False) -> None:
        self.checkpoint = checkpoint_dir / "checkpoint.pt" if checkpoint_dir else None
        self.resume = resume

    def wrap(self, objective: nn.Module) -> nn.Module:
        """No wrapping in-process."""
        return objective

    def device(self, config: TrainConfig) -> torch.device:
        """CUDA when asked for or available under ``auto``, else CPU."""
        if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint file, when resuming and it exists."""
        if self.resume and self.checkpoint and self.checkpoint.exists():
            return torch.load(self.checkpoint, weights_only=False)
        return None

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Write the checkpoint atomically (a crash mid-write keeps the previous one)."""
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)


@dataclass
class FitResult:
    """The outcome of a training run (weights are the best validation epoch's)."""

    model: nn.Module
    best_epoch: int
    valid: Metrics
    test: Metrics
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    seconds_to_best: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training seconds per epoch (validation excluded)."""
        times = [h["train_seconds"] for h in self.history]
        return float(np.mean(times)) if times else 0.0


def make_scorer(model: nn.Module, device: torch.device):
    """Wrap a model into an evaluation ``Scorer`` (numpy in, numpy out, no gradients)."""
    def score(users: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        used = np.flatnonzero((seqs != 0).any(axis=0))
        if used.size:  # drop all-padding columns (positions are right-aligned)
            seqs = seqs[:, used[0]:]
        model.eval()
        with torch.no_grad():
            out = model.score_all(torch.as_tensor(users, device=device),
                                  torch.as_tensor(seqs, device=device))
        return out.float().cpu().numpy()
    return score


def final_metrics(model: nn.Module, data: SequenceData, config: TrainConfig,
                  device: torch.device) -> tuple[Metrics, Metrics]:
    """Valid and test metrics of the selected model, both protocols (test computed here only)."""
    scorer = make_scorer(model, device)
    max_len = config.model.max_len
    return tuple(summarize(rank_users(scorer, data, split, max_len, seed=config.eval_seed,
                                      batch_size=config.eval_batch_size), data)
                 for split in (VALID, TEST))  # type: ignore[return-value]


def fit(config: TrainConfig, data: SequenceData, hooks: Hooks | None = None,
        progress: bool = True) -> FitResult:
    """Train, select on validation, restore the best epoch and evaluate on test once."""
    hooks = hooks or LocalHooks()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    device = hooks.device(config)
    if config.baseline == "pop":
        pop = PopularityModel(data.n_items).fit(data.train).to(device)
        valid, test = final_metrics(pop, data, config, device)
        return FitResult(pop, 0, valid, test, seconds=time.perf_counter() - started)

    model = build_model(config.model, data.n_users, data.n_items).to(device)
    objective = hooks.wrap(TrainingObjective(model, config.model.loss).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                 weight_decay=config.weight_decay)
    batches = TrainingBatches(data.train, data.n_users, data.n_items, config.model,
                              config.batch_size, config.seed)
    per_worker = len(batches) // hooks.world_size or 1
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_evals": 0,
                             "best_model": None, "history": [], "best_seconds": 0.0}
    resumed = hooks.load_checkpoint()
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["torch_rng"])
        state = resumed["loop"]
    scorer = make_scorer(model, device)
    bar = tqdm(range(state["epoch"] + 1, config.epochs + 1), desc=f"train {config.model.kind}",
               unit="epoch", disable=not progress or hooks.rank != 0, initial=state["epoch"],
               total=config.epochs)
    for epoch in bar:
        tick = time.perf_counter()
        objective.train()
        losses = []
        for index, batch in enumerate(batches.epoch(epoch)):
            if index // hooks.world_size >= per_worker or index % hooks.world_size != hooks.rank:
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=config.precision == "bf16"):
                loss = objective({k: v.to(device) for k, v in batch.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)),
                                  "train_seconds": time.perf_counter() - tick}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            ranked = rank_users(scorer, data, VALID, config.model.max_len,
                                batch_size=config.eval_batch_size, sampled=False)
            score = float(np.mean(1.0 / np.log2(ranked.full_ranks + 2.0)
                                  * (ranked.full_ranks < 10)))
            # Named apart from the final "valid_full_ndcg_10" metric that tracking logs.
            record["epoch_valid_ndcg_10"] = score
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, bad_evals=0,
                             best_model=copy.deepcopy(model.state_dict()),
                             best_seconds=time.perf_counter() - started)
            else:
                state["bad_evals"] += 1
        state["history"].append(record)
        state["epoch"] = epoch
        bar.set_postfix(loss=f"{record['loss']:.4f}",
                        valid_ndcg10=f"{state['best_score']:.4f}@{state['best_epoch']}")
        hooks.report(record, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "torch_rng": torch.get_rng_state(), "loop": state})
        if state["bad_evals"] >= config.patience:
            break
    bar.close()
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    valid, test = final_metrics(model, data, config, device)
    return FitResult(model, state["best_epoch"], valid, test, history=state["history"],
                     seconds=time.perf_counter() - started,
                     seconds_to_best=state["best_seconds"])
