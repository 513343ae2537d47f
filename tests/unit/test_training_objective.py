"""The training objective: the full-catalogue softmax, its seen-item mask and the second target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from movierec.models import ModelConfig, build_model, ce_lookahead_loss, ce_loss
from movierec.training.loop import TrainingObjective


def test_fast_ce_objective_equals_the_full_catalogue_reference() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(max_len=6, d_item=8, d_user=4, loss="ce", dropout=0.0,
                                    ce_mask_seen="none"), n_users=5, n_items=20).eval()
    users = torch.tensor([1, 2, 3])
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 7, 8]])
    pos = torch.tensor([[0, 0, 4, 5, 6, 9], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 8, 10]])
    fast = TrainingObjective(model, "ce")({"users": users, "seqs": seqs, "pos": pos})
    # The reference scores [e_item ; e_user] over the whole catalogue; the user term is the
    # same for every candidate of a row, so it must cancel in the softmax.
    reference = ce_loss(model.training_logits_all(users, seqs), pos, pos != 0)
    torch.testing.assert_close(fast, reference)


@pytest.mark.parametrize("mode", ["window", "prefix"])
def test_ce_objective_leaves_seen_items_out_of_the_softmax(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(max_len=4, d_item=8, d_user=4, loss="ce", dropout=0.0,
                                    ce_mask_seen=mode), n_users=3, n_items=10).eval()
    users = torch.tensor([1, 2])
    seqs = torch.tensor([[0, 3, 4, 5], [1, 2, 3, 4]])
    pos = torch.tensor([[0, 4, 5, 6], [2, 3, 4, 9]])
    # The reference: the full catalogue with the seen items set to -inf by hand.
    logits = model.training_logits_all(users, seqs).clone()
    window = {0: {3, 4, 5, 6}, 1: {1, 2, 3, 4, 9}}
    for b in range(2):
        for t in range(4):
            if pos[b, t] == 0:
                continue
            seen = (window[b] if mode == "window"
                    else {int(i) for i in seqs[b, : t + 1] if i != 0})
            for item in seen - {int(pos[b, t])}:
                logits[b, t, item] = float("-inf")
    expected = ce_loss(logits, pos, pos != 0)
    got = TrainingObjective(model, "ce")({"users": users, "seqs": seqs, "pos": pos})
    torch.testing.assert_close(got, expected)
    unmasked = ce_loss(model.training_logits_all(users, seqs), pos, pos != 0)
    assert got < unmasked  # masking removes competitors, so the loss must drop
    got.backward()  # the bias inside the product must leave a valid graph
    assert model.item_embedding.weight.grad is not None


@pytest.mark.parametrize("mode", ["window", "prefix", "none"])
def test_ce_lookahead_adds_the_item_after_next_with_its_weight(mode: str) -> None:
    def model_with(weight: float) -> torch.nn.Module:
        torch.manual_seed(0)  # the weight changes the loss only, not the initial weights
        return build_model(ModelConfig(max_len=4, d_item=8, d_user=4, dropout=0.0,
                                       ce_mask_seen=mode, ce_lookahead_weight=weight),
                           n_users=3, n_items=10).eval()

    model = model_with(0.5)
    users = torch.tensor([1, 2])
    seqs = torch.tensor([[0, 3, 4, 5], [1, 2, 3, 4]])
    pos = torch.tensor([[0, 4, 5, 6], [2, 3, 4, 9]])
    batch = {"users": users, "seqs": seqs, "pos": pos}
    # The reference, by hand: one softmax per position over the catalogue less the seen
    # items, where the next item and the one after it both stay in.
    logits = model.training_logits_all(users, seqs).detach()
    window = {0: {3, 4, 5, 6}, 1: {1, 2, 3, 4, 9}}
    nexts, afters = [], []
    for b in range(2):
        for t in range(4):
            if pos[b, t] == 0:
                continue
            after = int(pos[b, t + 1]) if t + 1 < 4 else 0
            seen = {"window": window[b], "none": set(),
                    "prefix": {int(i) for i in seqs[b, : t + 1] if i != 0}}[mode]
            row = logits[b, t].clone()
            for item in seen - {int(pos[b, t]), after}:
                row[item] = float("-inf")
            log_probs = torch.log_softmax(row[1:], dim=0)
            nexts.append(-log_probs[pos[b, t] - 1])
            if after:
                afters.append(-log_probs[after - 1])
    expected = torch.stack(nexts).mean() + 0.5 * torch.stack(afters).mean()
    got = TrainingObjective(model, "ce")(batch)
    torch.testing.assert_close(got, expected)
    got.backward()
    grad = model.item_embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_ce_lookahead_loss_without_weight_or_items_after_is_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    logits[:, 0] = float("-inf")  # item 1 left out: the stand-in gather of rows without one
    targets = torch.tensor([2, 3, 4, 5, 6])
    plain = F.cross_entropy(logits, targets - 1)
    after = torch.tensor([3, 0, 5, 0, 0])
    assert torch.equal(ce_lookahead_loss(logits, targets, after, 0.0), plain)
    assert torch.equal(ce_lookahead_loss(logits, targets, None, 0.5), plain)
    # No position has an item after its target: no second term, and no NaN from the rows'
    # -inf stand-in.
    leaf = logits.clone().requires_grad_()
    none_after = ce_lookahead_loss(leaf, targets, torch.zeros(5, dtype=torch.long), 0.5)
    torch.testing.assert_close(none_after, plain)
    none_after.backward()
    assert torch.isfinite(leaf.grad[:, 1:]).all()
    # With items after: their mean negative log-probability, weighted.
    log_probs = torch.log_softmax(logits, dim=-1)
    second = -(log_probs[0, 2] + log_probs[2, 4]) / 2
    torch.testing.assert_close(ce_lookahead_loss(logits, targets, after, 0.5),
                               plain + 0.5 * second)


def test_ce_lookahead_loss_runs_its_softmax_in_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    targets, after = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([7, 8, 0, 9, 10, 0])
    # float32 arithmetic on the logits as bf16 gives them: only their rounding may differ.
    exact = ce_lookahead_loss(logits.bfloat16().float(), targets, after, 0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ce_lookahead_loss(logits.bfloat16(), targets, after, 0.25)
    assert low.dtype == torch.float32
    # A bf16 log-softmax (autocast leaves it in bf16) is off by 0.0024 here.
    torch.testing.assert_close(low, exact, atol=1e-6, rtol=1e-6)
