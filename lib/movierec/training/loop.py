"""The one training function both runners use: epochs, validation, early stopping, test.

Model selection uses validation only (full-ranking NDCG@10); the best weights are restored
and test metrics are computed once, at the end. The runner-specific parts (DDP wrapping,
where checkpoints go, how progress is reported) come in through ``Hooks``.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from movierec.data.columns import TEST, VALID
from movierec.data.dataset import SequenceData
from movierec.evaluation.protocols import RankedUsers, full_ranking_per_user, rank_users
from movierec.evaluation.report import Metrics, summarize
from movierec.machine import keep_freed_memory
from movierec.models import (
    SSEPT,
    PopularityModel,
    TrainingBatches,
    bce_loss,
    build_model,
    ce_lookahead_loss,
    lookahead_targets,
    seen_items_bias,
)
from movierec.models.spectral import init_item_embeddings
from movierec.training.config import TrainConfig
from movierec.training.hooks import Hooks, LocalHooks, check_same_run
from movierec.training.soup import branch_seed, refit_key, refit_loss_branch, soup_plan

SELECTION_METRIC = "ndcg@10"
# What a phase trains on: each user's items and their timestamps (None without times).
PhaseSequences = tuple[list[np.ndarray], list[np.ndarray] | None]


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
        weight = self.model.config.ce_lookahead_weight
        after = lookahead_targets(pos, real) if weight else None
        seen = seen_items_bias(seqs, pos, real, self.model.n_items,
                               self.model.config.ce_mask_seen, keep=after)
        logits = self.model.next_item_logits(rows, seen)
        return ce_lookahead_loss(logits, pos.reshape(-1)[real], after, weight)


@dataclass
class FitResult:
    """The outcome of a training run.

    ``valid`` is always the selected model's (the best validation epoch's). With
    ``TrainConfig.refit`` the returned ``model`` and ``test`` are those of the refit, which
    also learned the validation items: its own validation scores would be optimistic.
    ``test_ranks`` are the per-user ranks behind ``test`` (for per-user statistics without
    ranking again); runs on Ray return metrics only, so theirs is None. With
    ``fit(final_test=False)`` ``test`` is empty and ``test_ranks`` None. ``resumes`` lists
    where the run restarted from a checkpoint (``phase``, last finished ``epoch``, soup
    ``branch``), one entry per restart.
    """

    model: nn.Module
    best_epoch: int
    valid: Metrics
    test: Metrics
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    seconds_to_best: float = 0.0
    refit_history: list[dict[str, Any]] = field(default_factory=list)
    test_ranks: RankedUsers | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training seconds per epoch of the selection phase (validation excluded)."""
        times = [h["train_seconds"] for h in self.history]
        return float(np.mean(times)) if times else 0.0

    @property
    def refit_epochs(self) -> int:
        """Epochs trained by the refit on train + valid, soup branches included (0: none)."""
        return len(self.refit_history)

    @property
    def soup_branches(self) -> int:
        """Branches whose weights the refit averaged (1: no soup, 0: no refit)."""
        if not self.refit_history:
            return 0
        return len({k for h in self.refit_history for k in h
                    if refit_loss_branch(k) is not None})


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


def rank_split(model: nn.Module, data: SequenceData, config: TrainConfig,
               device: torch.device, split: str) -> RankedUsers:
    """Each user's ranks of their ``split`` item (``valid`` or ``test``), both protocols."""
    return rank_users(make_scorer(model, device), data, split, config.model.max_len,
                      seed=config.eval_seed, batch_size=config.eval_batch_size,
                      tie_orders=config.model.tie_orders)


def evaluate_split(model: nn.Module, data: SequenceData, config: TrainConfig,
                   device: torch.device, split: str) -> Metrics:
    """Both protocols' metrics of ``model`` on ``split`` (``valid`` or ``test``)."""
    return summarize(rank_split(model, data, config, device, split), data)


def _new_state() -> dict[str, Any]:
    """The loop state a checkpoint carries: phase, epoch, selection and records."""
    return {"phase": "select", "epoch": 0, "best_score": -1.0, "best_epoch": 0,
            "bad_evals": 0, "best_model": None, "history": [], "best_seconds": 0.0,
            "valid": None, "refit_history": [], "branch": 0, "trunk": None, "soup": None,
            "resumes": [], "seconds": 0.0}


def training_sequences(data: SequenceData, refit: bool) -> PhaseSequences:
    """Each user's training items and their timestamps (None when the data has none).

    Selection trains on the training items; the refit on each user's test-time history,
    the training items plus the validation item.
    """
    split = TEST if refit else VALID
    users = range(data.n_users + 1)
    sequences = [data.history(user, split) for user in users]
    if data.train_times is None:
        return sequences, None
    return sequences, [data.history_times(user, split) for user in users]


def new_model(config: TrainConfig, data: SequenceData,
              sequences: Sequence[np.ndarray] | None) -> nn.Module:
    """A freshly initialised network for a phase that trains on ``sequences``.

    With ``item_init="spectral"`` its item embeddings start from those sequences (train for
    the selection, train + valid for the refit), never from items it will be tested on.
    ``sequences`` None skips that start: a resumed run's checkpoint replaces the weights.
    """
    model = build_model(config.model, data.n_users, data.n_items)
    if config.model.item_init == "spectral" and sequences is not None:
        init_item_embeddings(model.item_embedding, sequences, config.seed)
    return model


def _train_phase(config: TrainConfig, data: SequenceData, hooks: Hooks, model: nn.Module,
                 phase_data: PhaseSequences, device: torch.device, state: dict[str, Any],
                 resumed: dict[str, Any] | None, started: float, progress: bool) -> None:
    """Run the epochs of ``state["phase"]`` on ``phase_data``, checkpointing after each.

    ``select`` trains on the training sequences, validates and stops early. ``refit``
    retrains on train + valid items for the selected number of epochs, without validation;
    with a soup (``soup_plan``) it forks at the fork epoch into branches that differ in
    batch order and dropout, and ends with the mean of the branches' weights.
    """
    refit = state["phase"] == "refit"
    if not refit and state["bad_evals"] >= config.patience:
        return  # resumed after selection had stopped early: nothing left to train
    objective = hooks.wrap(TrainingObjective(model, config.model.loss).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                 weight_decay=config.weight_decay)
    sequences, times = phase_data

    def batches(seed: int) -> TrainingBatches:
        return TrainingBatches(sequences, data.n_users, data.n_items, config.model,
                               config.batch_size, seed, times=times)

    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["torch_rng"])
        if resumed.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])  # dropout masks on the GPU
    fork, branches = soup_plan(config, state["best_epoch"]) if refit else (0, 1)
    epochs = state["best_epoch"] if refit else config.epochs
    total = fork + branches * (epochs - fork)  # epochs this phase trains in all
    bar = tqdm(total=total, initial=state["epoch"] + state["branch"] * (epochs - fork),
               desc=f"{'refit' if refit else 'train'} {config.model.kind}", unit="epoch",
               disable=not progress or hooks.rank != 0)

    def checkpoint(record: dict[str, Any]) -> None:
        state["seconds"] = time.perf_counter() - started  # a resumed run goes on from it
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        hooks.report(record, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
                              "loop": state})

    while state["branch"] < branches:
        branch = state["branch"]
        if branch and state["epoch"] == fork:  # a new branch starts from the trunk
            model.load_state_dict(state["trunk"]["model"])
            optimizer.load_state_dict(state["trunk"]["optimizer"])
            torch.manual_seed(branch_seed(config.seed, branch))
        source = batches(branch_seed(config.seed, branch))
        for epoch in range(state["epoch"] + 1, epochs + 1):
            record = _train_epoch(objective, optimizer, source, epoch, hooks, device, config)
            loss = record["loss"]
            if refit:
                record = {"epoch": epoch, refit_key("loss", branch): loss,
                          refit_key("train_seconds", branch): record["train_seconds"]}
            else:
                _validate(model, data, config, device, state, record, started)
            state["refit_history" if refit else "history"].append(record)
            state["epoch"] = epoch
            if epoch == fork and branch == 0:
                state["trunk"] = copy.deepcopy({"model": model.state_dict(),
                                                "optimizer": optimizer.state_dict()})
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", **_progress_fields(state, refit, branch, branches))
            checkpoint(record)
            if not refit and state["bad_evals"] >= config.patience:
                break
        if branches == 1:
            break
        # Add the finished branch to the soup, then start the next one from the trunk.
        weights = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        # .to(): a resumed soup was read onto the CPU (see the hooks' load_checkpoint).
        state["soup"] = weights if state["soup"] is None else {
            k: state["soup"][k].to(v.device) + v for k, v in weights.items()}
        state.update(branch=branch + 1, epoch=fork)
    if branches > 1:
        dtypes = {k: v.dtype for k, v in model.state_dict().items()}
        model.load_state_dict({k: (v / branches).to(dtypes[k]) for k, v in state["soup"].items()})
        state.update(trunk=None, soup=None)
    bar.close()


def _progress_fields(state: dict[str, Any], refit: bool, branch: int,
                     branches: int) -> dict[str, str]:
    """Progress-bar fields after an epoch of this run (see :func:`progress_fields`)."""
    # The last evaluated epoch's score (epochs between evaluations show the previous one).
    last = next((h["epoch_valid_ndcg_10"] for h in reversed(state["history"])
                 if "epoch_valid_ndcg_10" in h), None)
    return progress_fields(refit, last, (state["best_score"], state["best_epoch"]), branch,
                           branches)


def progress_fields(refit: bool, last: float | None, best: tuple[float, int] | None,
                    branch: int, branches: int) -> dict[str, str]:
    """Progress-bar fields: the soup branch, or the last and best validation NDCG@10.

    One format for the in-process bar and the Ray driver's (``ray_progress``).

    Args:
        refit: An epoch of the refit (which does not validate).
        last: The last validation score (None before the first).
        best: The best score so far and its epoch.
        branch: The refit's soup branch (0-based).
        branches: How many branches the refit has.
    """
    shown = {} if best is None else {"valid_best": f"{best[0]:.4f}@{best[1]}"}
    if refit:  # the refit does not validate: the selected score stays in view
        return {"branch": f"{branch + 1}/{branches}"} if branches > 1 else shown
    return {} if last is None else {"valid_ndcg10": f"{last:.4f}", **shown}


def _train_epoch(objective: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: TrainingBatches, epoch: int, hooks: Hooks, device: torch.device,
                 config: TrainConfig) -> dict[str, Any]:
    """One pass over this worker's share of the batches: the epoch's mean loss and time."""
    tick = time.perf_counter()
    objective.train()
    if len(batches) < hooks.world_size:  # a worker without a batch would stall DDP's sync
        raise ValueError(f"{len(batches)} batches per epoch cannot feed {hooks.world_size} "
                         f"workers: lower batch_size ({config.batch_size}) or the workers")
    per_worker = len(batches) // hooks.world_size
    if hooks.world_size > 1:
        # Each worker's dropout masks from (batches' seed, epoch, rank): independent across
        # workers, and the same after a resume, whose checkpoint holds rank 0's state only.
        torch.manual_seed(int(np.random.SeedSequence(
            [batches.seed, epoch, hooks.rank]).generate_state(1)[0]))
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
    mean_loss, seconds = float(np.mean(losses)), time.perf_counter() - tick
    if hooks.world_size > 1 and dist.is_initialized():
        # The epoch's loss over every worker's batches (rank 0's record is the one logged),
        # and the time of the slowest worker.
        totals = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        mean_loss, seconds = float(totals[0] / totals[1]), float(slowest[0])
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"the training loss is {mean_loss} in epoch {epoch}: training "
                                 f"diverged; lower lr ({config.lr:g}) or train in fp32 "
                                 f"(precision is {config.precision})")
    return {"epoch": epoch, "loss": mean_loss, "train_seconds": seconds}


def _validate(model: nn.Module, data: SequenceData, config: TrainConfig, device: torch.device,
              state: dict[str, Any], record: dict[str, Any], started: float) -> None:
    """Score validation after a selection epoch when due, and keep the best weights."""
    epoch = record["epoch"]
    if epoch % config.eval_every and epoch != config.epochs:
        return
    per_user = full_ranking_per_user(make_scorer(model, device), data, VALID,
                                     config.model.max_len, batch_size=config.eval_batch_size)
    score = float(per_user["ndcg@10"].mean())
    # Named apart from the final "valid_full_*" metrics that tracking logs; the same ranks
    # give the hit rate and MRR for free (the sampled protocol is left for the end).
    record.update(epoch_valid_ndcg_10=score, epoch_valid_hr_10=float(per_user["hr@10"].mean()),
                  epoch_valid_mrr=float(per_user["mrr"].mean()))
    if score > state["best_score"]:
        state.update(best_score=score, best_epoch=epoch, bad_evals=0,
                     best_model=copy.deepcopy(model.state_dict()),
                     best_seconds=time.perf_counter() - started)
    else:
        state["bad_evals"] += 1


def _final_test(model: nn.Module, data: SequenceData, config: TrainConfig,
                device: torch.device, wanted: bool) -> tuple[Metrics, RankedUsers | None]:
    """The test metrics and per-user ranks of the final model; ({}, None) when not wanted."""
    if not wanted:
        return {}, None
    ranks = rank_split(model, data, config, device, TEST)
    return summarize(ranks, data), ranks


def fit(config: TrainConfig, data: SequenceData, hooks: Hooks | None = None,
        progress: bool = True, final_test: bool = True) -> FitResult:
    """Train, select on validation, optionally refit on train + valid, then test once.

    Selection: epochs on the training sequences with validation every ``eval_every``,
    early stopping, and the best epoch's weights restored; ``valid`` is measured on them.
    Refit (``config.refit``): a fresh model with the same seed trained on train + valid
    items for the selected number of epochs, forked into ``soup_branches`` branches at
    ``soup_fork`` of them whose weights are averaged; ``test`` is measured on it.
    ``final_test`` False leaves the test items alone (``test`` is empty): tuning trials are
    judged on validation, and their test scores would only tempt someone to look.
    """
    hooks = hooks or LocalHooks()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    device = hooks.device(config)
    if device.type == "cpu":
        keep_freed_memory()  # each step's large tensors reuse the last step's pages
    if config.baseline == "pop":
        pop = PopularityModel(data.n_items).fit(data.train).to(device)
        test, test_ranks = _final_test(pop, data, config, device, final_test)
        return FitResult(pop, 0, evaluate_split(pop, data, config, device, VALID), test,
                         seconds=time.perf_counter() - started, test_ranks=test_ranks)

    resumed = hooks.load_checkpoint()
    if resumed:
        check_same_run(resumed["loop"].get("config"), config)
        saved_data = resumed["loop"].get("data_version")
        if saved_data is not None and saved_data != data.data_version:
            raise ValueError(f"the checkpoint was trained on data_version {saved_data}, not "
                             f"{data.data_version} ({data.folder}): resume on the same "
                             "prepared data, or start over without resume")
    state = {**_new_state(), **resumed["loop"]} if resumed else _new_state()
    state["config"] = config.model_dump(mode="json")
    state["data_version"] = data.data_version
    started -= state["seconds"]  # a resumed run's times include those before the crash
    if resumed:  # saved with the next checkpoint; a crash before one is written forgets it
        state["resumes"] = [*state["resumes"], {k: state[k] for k in ("phase", "epoch", "branch")}]
    phase_data = training_sequences(data, refit=state["phase"] == "refit")
    model = new_model(config, data, None if resumed else phase_data[0]).to(device)
    if state["phase"] == "select":
        _train_phase(config, data, hooks, model, phase_data, device, state, resumed, started,
                     progress)
        if state["best_model"] is not None:
            model.load_state_dict(state["best_model"])
        state["valid"] = evaluate_split(model, data, config, device, VALID)
        if config.refit and state["best_epoch"] > 0:
            state.update(phase="refit", epoch=0, branch=0, best_model=None)
            resumed = None
            # The refit starts from the same random weights (and, with spectral item
            # vectors, from those of its own sequences).
            seed_everything(config.seed)
            phase_data = training_sequences(data, refit=True)
            model = new_model(config, data, phase_data[0]).to(device)
    if state["phase"] == "refit":
        _train_phase(config, data, hooks, model, phase_data, device, state, resumed, started,
                     progress)
    test, test_ranks = _final_test(model, data, config, device, final_test)
    return FitResult(model, state["best_epoch"], state["valid"], test,
                     history=state["history"], seconds=time.perf_counter() - started,
                     seconds_to_best=state["best_seconds"],
                     refit_history=state["refit_history"], test_ranks=test_ranks,
                     resumes=state["resumes"])
