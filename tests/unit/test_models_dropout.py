"""The model's dropout: its drop rate, its scaling, its seeding and which mask it draws."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from movierec.models import dropout as dropout_module
from movierec.models.dropout import (
    Dropout,
    keep_mask,
    keep_threshold,
    quantised_drop_probability,
)
from movierec.models.sse_pt import CausalSelfAttention

N = 1_000_000


@pytest.fixture
def lane_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every CPU take the 16-bit-lane path, whatever this machine's vendor."""
    monkeypatch.setattr(dropout_module, "torch_mask_is_fast", lambda device: False)


def within_five_sigma(observed: float, p: float, n: int) -> bool:
    return abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_drop_rate_matches_p_in_every_lane(p: float) -> None:
    torch.manual_seed(0)
    kept = keep_mask((N,), p)
    target = quantised_drop_probability(p)
    assert within_five_sigma(1 - kept.double().mean().item(), target, N)
    # Each 64-bit draw feeds four lanes; a lane whose sign bit never varies (torch's
    # unbounded int64 random_) would keep everything at p < 0.5.
    for lane in range(4):
        rate = 1 - kept.view(-1, 4)[:, lane].double().mean().item()
        assert within_five_sigma(rate, target, N // 4), (lane, rate)


@pytest.mark.parametrize("p", [0.0, 2**-16, 0.1, 0.3, 0.5, 0.9, 1 - 2**-16])
def test_threshold_drops_exactly_the_quantised_share_of_lane_values(p: float) -> None:
    lanes = torch.arange(-(2**15), 2**15, dtype=torch.int32)
    dropped = int((lanes < keep_threshold(p)).sum())
    assert dropped == round(p * 2**16) == quantised_drop_probability(p) * 2**16


def test_any_shape_and_the_certain_cases() -> None:
    torch.manual_seed(6)
    assert keep_mask((3, 5, 7), 0.5).shape == (3, 5, 7)  # 105 lanes: not a whole draw
    assert keep_mask((0, 4), 0.5).shape == (0, 4)
    assert keep_mask((1000,), 0.0).all()
    assert not keep_mask((1000,), 1.0).any()


def test_half_precision_and_strided_inputs(lane_masks: None) -> None:
    layer = Dropout(0.5).train()
    x = torch.ones(40, 30, dtype=torch.bfloat16).T  # not contiguous
    torch.manual_seed(7)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (30, 40)
    assert set(out.unique().tolist()) <= {0.0, 2.0}


def test_neighbouring_lanes_are_independent() -> None:
    torch.manual_seed(1)
    kept = keep_mask((N,), 0.5).view(-1, 2).double()
    both = (kept[:, 0] * kept[:, 1]).mean().item()
    assert within_five_sigma(both, 0.25, N // 2)


def test_quantised_probability_is_within_half_a_lane_step() -> None:
    for p in (0.0, 0.1, 0.3, 1 / 3, 0.999):
        assert abs(quantised_drop_probability(p) - p) <= 2**-17


def test_kept_values_are_scaled_so_the_mean_is_kept(lane_masks: None) -> None:
    layer = Dropout(0.3).train()
    torch.manual_seed(2)
    out = layer(torch.ones(N))
    scale = 1 / (1 - quantised_drop_probability(0.3))
    assert out.unique().tolist() == pytest.approx([0.0, scale])
    assert out.mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(0.3 / 0.7 / N))


def test_gradient_is_the_mask_times_the_scale(lane_masks: None) -> None:
    layer = Dropout(0.4).train()
    x = torch.randn(64, 50, requires_grad=True)
    torch.manual_seed(3)
    out = layer(x)
    out.sum().backward()
    scale = 1 / (1 - quantised_drop_probability(0.4))
    kept = out != 0
    torch.testing.assert_close(x.grad, kept.float() * scale)
    torch.testing.assert_close(out, x.detach() * kept * scale)


def test_same_seed_same_mask_other_seed_other_mask(lane_masks: None) -> None:
    layer = Dropout(0.2).train()
    x = torch.ones(10_000)
    torch.manual_seed(4)
    first = layer(x)
    torch.manual_seed(4)
    assert torch.equal(first, layer(x))
    assert not torch.equal(first, layer(x))


def test_evaluation_and_zero_rate_are_the_identity() -> None:
    x = torch.randn(5, 7)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1 - 2**-20])
def test_impossible_rates_are_rejected(p: float) -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


@pytest.mark.parametrize(("vendor", "uses_torch"), [("GenuineIntel", True),
                                                     ("AuthenticAMD", False)])
def test_torch_mask_only_where_it_is_vectorised(monkeypatch: pytest.MonkeyPatch,
                                                vendor: str, uses_torch: bool) -> None:
    monkeypatch.setattr(dropout_module, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    x = torch.ones(1000)
    torch.manual_seed(5)
    out = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    expected = (F.dropout(x, 0.3, training=True) if uses_torch
                else keep_mask(x.shape, 0.3).float() / (1 - quantised_drop_probability(0.3)))
    assert torch.equal(out, expected)
    assert dropout_module.torch_mask_is_fast(torch.device("cuda"))


# --- dropout on attention weights -------------------------------------------------------

def attention_case(heads: int, p: float, width: int = 8, length: int = 6,
                   ) -> tuple[CausalSelfAttention, torch.Tensor, torch.Tensor]:
    """A seeded attention module, a batch of 3 sequences and a causal mask.

    In sequence 0 the first 2 keys are padding: queries 2 and later may not see them.
    """
    torch.manual_seed(0)
    attention = CausalSelfAttention(width, heads, dropout=p)
    x = torch.randn(3, length, width)
    allowed = torch.ones(length, length, dtype=torch.bool).tril().repeat(3, 1, 1, 1)
    allowed[0, 0, 2:, :2] = False
    return attention, x, allowed


@pytest.mark.parametrize("heads", [1, 2])
def test_written_out_attention_is_sdpa(monkeypatch: pytest.MonkeyPatch, lane_masks: None,
                                       heads: int) -> None:
    # With the weights' dropout made the identity, the path that draws lane masks must
    # compute exactly what scaled_dot_product_attention does (scale, mask, heads).
    attention, x, allowed = attention_case(heads, 0.3)
    expected = attention.eval()(x, allowed)
    monkeypatch.setattr(Dropout, "forward", lambda self, t: t)
    torch.testing.assert_close(attention.train()(x, allowed), expected)


def test_attention_weight_dropout_keeps_the_mean_and_the_mask(lane_masks: None) -> None:
    attention, x, allowed = attention_case(2, 0.5)
    with torch.no_grad():
        expected = attention.eval()(x, allowed)
        attention.train()
        torch.manual_seed(1)
        draws = torch.stack([attention(x, allowed) for _ in range(4000)])
        # Masked keys get no weight under dropout either: at the same seed (the same
        # masks), changing sequence 0's padded keys and sequence 1's last two positions
        # changes no output that may not see them.
        changed = x.clone()
        changed[0, :2] = torch.randn(2, 8)
        changed[1, 4:] = torch.randn(2, 8)
        torch.manual_seed(2)
        before = attention(x, allowed)
        torch.manual_seed(2)
        after = attention(changed, allowed)
    assert not torch.allclose(draws[0], expected)  # weights really are dropped
    torch.testing.assert_close(draws.mean(0), expected, atol=0.08, rtol=0)
    torch.testing.assert_close(after[0, 2:], before[0, 2:])
    torch.testing.assert_close(after[1, :4], before[1, :4])
    torch.testing.assert_close(after[2], before[2])
    assert not torch.allclose(after[1, 4:], before[1, 4:])  # the change did reach the model


@pytest.mark.parametrize(("fast", "sdpa_dropout", "lane_masks_drawn"),
                         [(True, 0.3, 0), (False, None, 1)])
def test_attention_weights_take_the_lane_mask_only_where_torch_is_slow(
        monkeypatch: pytest.MonkeyPatch, fast: bool, sdpa_dropout: float | None,
        lane_masks_drawn: int) -> None:
    monkeypatch.setattr(dropout_module, "torch_mask_is_fast", lambda device: fast)
    seen: list[float] = []
    drawn: list[tuple[int, ...]] = []
    sdpa, draw = F.scaled_dot_product_attention, dropout_module.keep_mask

    def spy(*args: torch.Tensor, dropout_p: float = 0.0, **kwargs: torch.Tensor) -> torch.Tensor:
        seen.append(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kwargs)

    def counted(shape: tuple[int, ...], *args: object, **kwargs: object) -> torch.Tensor:
        drawn.append(tuple(shape))
        return draw(shape, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(dropout_module, "keep_mask", counted)
    attention, x, allowed = attention_case(1, 0.3)
    attention.train()(x, allowed)
    assert seen == ([] if sdpa_dropout is None else [sdpa_dropout])
    assert drawn == [(3, 1, 6, 6)] * lane_masks_drawn  # one mask over the weights
    attention.eval()(x, allowed)  # evaluation: SDPA, no dropout
    assert seen[-1] == 0.0
