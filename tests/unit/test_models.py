"""Behaviour of the SSE-PT/SASRec network, its config, losses and the popularity baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from movierec.models import (
    SSEPT,
    ModelConfig,
    PopularityModel,
    TrainingBatches,
    bce_loss,
    build_model,
    ce_loss,
    lookahead_targets,
    seen_items_bias,
)

N_USERS, N_ITEMS, MAX_LEN = 6, 25, 8


def small_config(**overrides: object) -> ModelConfig:
    values: dict[str, object] = {"max_len": MAX_LEN, "d_item": 8, "d_user": 4, "n_blocks": 2,
                                 "n_heads": 2, "dropout": 0.2}
    values.update(overrides)
    return ModelConfig(**values)


def make_model(seed: int = 0, **overrides: object) -> SSEPT:
    torch.manual_seed(seed)
    model = build_model(small_config(**overrides), N_USERS, N_ITEMS)
    return model.eval()


def randomise_norms(model: SSEPT) -> None:
    """Non-trivial LayerNorm biases: padded positions then carry LN(0) = bias into attention."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.bias.normal_()
                module.weight.normal_()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    users = torch.tensor([1, 2, 3, 0])
    seqs = torch.tensor([
        [0, 0, 0, 4, 5, 6, 7, 8],
        [1, 2, 3, 4, 5, 6, 7, 25],
        [0, 0, 0, 0, 0, 0, 0, 9],
        [0, 0, 10, 11, 12, 13, 14, 15],
    ])
    return users, seqs


KINDS = [pytest.param({"kind": "sse-pt"}, id="sse-pt"), pytest.param({"kind": "sasrec"},
                                                                      id="sasrec"),
         pytest.param({"norm_first": False}, id="post-ln")]


# --- config -----------------------------------------------------------------------------

def test_config_defaults_and_hidden() -> None:
    config = ModelConfig()
    assert (config.kind, config.max_len, config.hidden, config.loss) == ("sse-pt", 100, 100, "ce")
    assert (config.sse_prob_user, config.sse_prob_item) == (0.92, 0.1)
    assert config.ce_mask_seen == "window"
    sasrec = ModelConfig(kind="sasrec")
    assert sasrec.hidden == 50 and sasrec.user_width == 0


@pytest.mark.parametrize(("bad", "match"), [
    ({"learning_rate": 0.001}, "Extra inputs are not permitted"),
    ({"sse_prob_user": 1.5}, "less than or equal to 1"),
    ({"sse_prob_item": -0.1}, "greater than or equal to 0"),
    ({"d_item": 0}, "greater than or equal to 1"),
    ({"d_user": 0}, "positive user width"),
    ({"n_heads": 3}, "not divisible"),  # 100 is not divisible by 3
    ({"kind": "bert4rec"}, "'sse-pt' or 'sasrec'"),
    ({"dropout": 1.0}, "less than or equal to 0.99"),
    ({"ce_lookahead_weight": -0.1}, "greater than or equal to 0"),
    ({"loss": "bce", "ce_lookahead_weight": 0.25}, "needs loss='ce'"),  # a second CE term
])
def test_config_rejects(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ModelConfig(**bad)


def test_config_sasrec_ignores_user_width() -> None:
    assert ModelConfig(kind="sasrec", d_user=0, d_item=48, n_heads=3).hidden == 48


# --- network ----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", KINDS)
def test_shapes(overrides: dict[str, object], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = make_model(**overrides)
    users, seqs = batch
    hidden = model.config.hidden
    assert model(users, seqs).shape == (4, MAX_LEN, hidden)
    scores = model.score_all(users, seqs)
    assert scores.shape == (4, N_ITEMS + 1)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    assert model.score_candidates(users, seqs, torch.ones(4, 7, dtype=torch.long)).shape == (4, 7)
    pos_logits, neg_logits = model.training_logits(users, seqs, seqs, seqs)
    assert pos_logits.shape == neg_logits.shape == (4, MAX_LEN)
    assert model.training_logits_all(users, seqs).shape == (4, MAX_LEN, N_ITEMS + 1)


@pytest.mark.parametrize("overrides", KINDS)
def test_no_look_ahead(overrides: dict[str, object],
                       batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = make_model(**overrides)
    randomise_norms(model)
    users, seqs = batch
    before = model(users, seqs)
    for t in range(MAX_LEN - 1):
        future = seqs.clone()
        future[:, t + 1:] = torch.randint(1, N_ITEMS + 1, future[:, t + 1:].shape)
        future[seqs == 0] = 0
        after = model(users, future)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])


@pytest.mark.parametrize("overrides", KINDS)
def test_padding_never_influences_outputs(overrides: dict[str, object],
                                          batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = make_model(**overrides)
    randomise_norms(model)
    users, seqs = batch
    before = model(users, seqs)
    assert (before[seqs == 0] == 0).all()
    with torch.no_grad():  # garbage in the padding row and in the padded positions' rows
        model.item_embedding.weight[0].normal_()
        model.position_embedding.weight[:2].normal_()
    after = model(users, seqs)
    real = seqs != 0
    real[1] = False  # row 1 has real items at positions 0-1, whose embeddings changed
    torch.testing.assert_close(after[real], before[real])


@pytest.mark.parametrize("overrides", KINDS)
def test_padded_keys_are_never_attended(overrides: dict[str, object],
                                        batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Dropping leading padding keeps every position's embedding (positions align right);
    # only the number of padded keys changes, which must not matter.
    model = make_model(**overrides)
    randomise_norms(model)
    users, seqs = batch
    keep = [0, 2]  # rows with at least 3 leading pads
    full = model(users[keep], seqs[keep])
    short = model(users[keep], seqs[keep][:, 3:])
    torch.testing.assert_close(short, full[:, 3:])


@pytest.mark.parametrize("overrides", KINDS)
def test_score_all_equals_score_candidates(overrides: dict[str, object],
                                           batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = make_model(**overrides)
    users, seqs = batch
    items = torch.arange(1, N_ITEMS + 1).expand(len(users), -1)
    torch.testing.assert_close(model.score_all(users, seqs)[:, 1:],
                               model.score_candidates(users, seqs, items))
    last = model.training_logits_all(users, seqs)[:, -1]
    torch.testing.assert_close(last, model.score_all(users, seqs))


def test_candidate_user_part_is_the_users_own_embedding() -> None:
    model = make_model()
    users, items = torch.tensor([2, 5]), torch.tensor([[3, 4, 0], [7, 8, 9]])
    candidates = model.candidate_embeddings(users, items)
    assert candidates.shape == (2, 3, 12)
    torch.testing.assert_close(candidates[:, :, :8], model.item_embedding(items))
    user = model.user_embedding.weight[users] * 2.0  # scaled by sqrt(d_user) = 2
    torch.testing.assert_close(candidates[:, :, 8:], user[:, None].expand(-1, 3, -1))


def test_sasrec_ignores_users(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = make_model(kind="sasrec")
    assert model.user_embedding is None
    assert not any("user" in name for name, _ in model.named_parameters())
    users, seqs = batch
    torch.testing.assert_close(model.score_all(users, seqs),
                               model.score_all(torch.tensor([5, 5, 1, 2]), seqs))


def test_sse_pt_uses_users(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = make_model()
    users, seqs = batch
    assert not torch.allclose(model.score_all(users, seqs)[:, 1:],
                              model.score_all(torch.tensor([5, 5, 1, 2]), seqs)[:, 1:])
    torch.testing.assert_close(model.user_embedding.weight[0], torch.zeros(4))


def test_deterministic_init_and_dropout(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    users, seqs = batch
    a, b = make_model(seed=3), make_model(seed=3)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(make_model(seed=4).item_embedding.weight, a.item_embedding.weight)
    a.train()
    b.train()
    torch.manual_seed(11)
    out_a = a(users, seqs)
    torch.manual_seed(11)
    assert torch.equal(out_a, b(users, seqs))


def test_too_long_sequence_is_rejected() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.tensor([1]), torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_score_all_exports_with_dynamic_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    class ScoreAll(torch.nn.Module):
        def __init__(self, model: SSEPT) -> None:
            super().__init__()
            self.model = model

        def forward(self, users: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
            return self.model.score_all(users, seqs)

    model = make_model()
    users, seqs = batch
    rows = torch.export.Dim("rows", min=1, max=4096)
    program = torch.export.export(ScoreAll(model).eval(), (users, seqs),
                                  dynamic_shapes=({0: rows}, {0: rows}))
    torch.testing.assert_close(program.module()(users[:2], seqs[:2]),
                               model.score_all(users[:2], seqs[:2]))


# --- losses -----------------------------------------------------------------------------

def test_bce_loss_hand_computed() -> None:
    zeros = torch.zeros(2, 3)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    torch.testing.assert_close(bce_loss(zeros, zeros, mask), torch.tensor(2 * math.log(2)))
    pos = torch.tensor([[9.0, 1.0, 2.0]])
    neg = torch.tensor([[9.0, -1.0, 0.0]])
    expected = (2 * math.log(1 + math.exp(-1.0))
                + math.log(1 + math.exp(-2.0)) + math.log(2)) / 2
    torch.testing.assert_close(bce_loss(pos, neg, torch.tensor([[0, 1, 1]])),
                               torch.tensor(expected))
    assert bce_loss(pos, neg, torch.zeros(1, 3)).item() == 0.0


def test_ce_loss_hand_computed() -> None:
    # Three items; column 0 is padding and must not enter the softmax even when huge.
    logits = torch.tensor([[[50.0, 0.0, 0.0, 0.0], [float("-inf"), 2.0, 0.0, 0.0],
                            [0.0, 5.0, 5.0, 5.0]]])
    targets = torch.tensor([[2, 1, 0]])
    mask = targets != 0
    second = -2.0 + math.log(math.exp(2.0) + 2)
    torch.testing.assert_close(ce_loss(logits, targets, mask),
                               torch.tensor((math.log(3) + second) / 2))
    empty = ce_loss(logits, targets, torch.zeros_like(mask))
    assert empty.item() == 0.0


def test_seen_items_bias_hand_computed() -> None:
    seqs = torch.tensor([[0, 2, 3, 2], [1, 4, 4, 5]])
    targets = torch.tensor([[0, 3, 2, 5], [4, 4, 5, 3]])
    rows = torch.tensor([1, 2, 3, 4, 7])  # (0,1) (0,2) (0,3) (1,0) (1,3)

    def items(bias: torch.Tensor) -> list[set[int]]:
        assert bias.shape == (5, 6) and bias.dtype == torch.float32
        assert torch.isneginf(bias).logical_or(bias == 0).all()  # only 0 or -inf
        return [{int(i) + 1 for i in torch.isneginf(row).nonzero()} for row in bias]

    # Window: every item of the window, inputs and targets, except the row's own target.
    assert items(seen_items_bias(seqs, targets, rows, 6, "window")) == [
        {2, 5}, {3, 5}, {2, 3}, {1, 3, 5}, {1, 4, 5}]
    # Prefix: only inputs up to the position (a repeat of the target stays unmasked).
    assert items(seen_items_bias(seqs, targets, rows, 6, "prefix")) == [
        {2}, {3}, {2, 3}, {1}, {1, 4, 5}]
    assert seen_items_bias(seqs, targets, rows, 6, "none") is None
    with pytest.raises(ValueError, match="mode"):
        seen_items_bias(seqs, targets, rows, 6, "all")


def test_lookahead_targets_and_the_items_they_keep_in_the_softmax() -> None:
    seqs = torch.tensor([[0, 2, 3, 2], [1, 4, 4, 5]])
    targets = torch.tensor([[0, 3, 2, 5], [4, 4, 5, 3]])
    rows = torch.tensor([1, 2, 3, 4, 7])  # (0,1) (0,2) (0,3) (1,0) (1,3)
    after = lookahead_targets(targets, rows)
    # The next position's target; the window's last position has none.
    assert after.tolist() == [2, 5, 0, 4, 0]
    bias = seen_items_bias(seqs, targets, rows, 6, "window", keep=after)
    masked = [{int(i) + 1 for i in torch.isneginf(row).nonzero()} for row in bias]
    # The window's items less the row's own target and the item after it (compare the
    # window case above: {2, 5}, {3, 5}, {2, 3}, {1, 3, 5}, {1, 4, 5}).
    assert masked == [{5}, {3}, {2, 3}, {1, 3, 5}, {1, 4, 5}]


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast", "fp64"])
def test_biased_logits_equal_masked_fill_under_cross_entropy_bit_for_bit(
        precision: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_item=12, d_user=4, max_len=5), n_users=3, n_items=30)
    hidden = torch.randn(40, 16)
    if precision == "fp64":  # the bias (float32, as seen_items_bias builds it) follows
        model, hidden = model.double(), hidden.double()
    bf16 = precision == "bf16-autocast"
    targets = torch.randint(0, 30, (40,))
    seen = torch.rand(40, 30) < 0.4
    seen[torch.arange(40), targets] = False  # a row's target is never masked
    bias = torch.zeros(40, 30).masked_fill_(seen, float("-inf"))
    weights = model.item_embedding.weight
    results = []
    for with_bias in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = (model.next_item_logits(hidden, bias) if with_bias else
                      model.next_item_logits(hidden).masked_fill(seen, float("-inf")))
        assert logits.dtype == {"fp32": torch.float32, "bf16-autocast": torch.bfloat16,
                                "fp64": torch.float64}[precision]
        assert torch.isneginf(logits[seen]).all() and torch.isfinite(logits[~seen]).all()
        loss = F.cross_entropy(logits, targets)
        results.append((logits.detach(), loss.detach(), *torch.autograd.grad(loss, weights)))
    # The bias enters the product (addmm) and no mask runs in backward: the softmax already
    # gives the masked logits a gradient of exactly 0.
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


# --- popularity ---------------------------------------------------------------------------

def test_popularity_ranks_counts_with_lower_id_tie_break() -> None:
    model = PopularityModel(n_items=5).fit([np.array([], np.int64), np.array([3, 3, 5, 1]),
                                            np.array([5, 2, 1])])
    assert model.counts.tolist() == [0, 2, 1, 2, 0, 2]
    scores = model.score_all(torch.tensor([1, 2]), torch.zeros(2, 4, dtype=torch.long))
    assert scores.shape == (2, 6) and torch.isneginf(scores[:, 0]).all()
    assert torch.argsort(scores[0, 1:], descending=True, stable=True).add(1).tolist() == [
        1, 3, 5, 2, 4]
    scores[0, 1] = -1.0  # rows are independent copies: masking one row leaves the model alone
    assert model.scores[1] == 5.0
    torch.testing.assert_close(model.score_candidates(torch.tensor([1]), None,
                                                      torch.tensor([[4, 1]])),
                               torch.tensor([[1.0, 5.0]]))


def test_popularity_rejects_unknown_items() -> None:
    with pytest.raises(ValueError, match=r"1\.\.3"):
        PopularityModel(n_items=3).fit(np.array([1, 4]))


# --- end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("kind", ["sse-pt", "sasrec"])
def test_overfits_tiny_dataset(loss: str, kind: str) -> None:
    # Each user cycles through a fixed pattern, so the next item is easy to learn.
    n_users, n_items = 12, 30
    rng = np.random.default_rng(0)
    sequences = [np.zeros(0, np.int64)]
    for _ in range(n_users):
        pattern = rng.choice(np.arange(1, n_items + 1), size=4, replace=False)
        sequences.append(np.tile(pattern, 3))
    config = small_config(kind=kind, loss=loss, dropout=0.0, sse_prob_user=0.0,
                          sse_prob_item=0.0)
    batches = TrainingBatches(sequences, n_users, n_items, config, batch_size=n_users, seed=0)
    torch.manual_seed(0)
    model = build_model(config, n_users, n_items)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for step in range(30):
        batch = next(batches.epoch(step))
        mask = batch["pos"] != 0
        if loss == "bce":
            value = bce_loss(*model.training_logits(batch["users"], batch["seqs"],
                                                    batch["pos"], batch["neg"]), mask)
        else:
            value = ce_loss(model.training_logits_all(batch["users"], batch["seqs"]),
                            batch["pos"], mask)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        losses.append(value.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
