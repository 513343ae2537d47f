"""The refit's soup plan and the record keys of its branches (movierec.training.soup)."""

from __future__ import annotations

from movierec.training.config import TrainConfig
from movierec.training.soup import branch_seed, soup_plan


def test_refit_keys_name_and_parse_the_soup_branches() -> None:
    from movierec.evaluation.plots import soup_branch_losses
    from movierec.training.soup import refit_key, refit_loss_branch

    assert [refit_key("loss", b) for b in (0, 1, 12)] == ["refit_loss", "refit_loss_1",
                                                          "refit_loss_12"]
    assert refit_key("train_seconds", 2) == "refit_train_seconds_2"
    for branch in (0, 1, 12):
        assert refit_loss_branch(refit_key("loss", branch)) == branch
    for other in ("loss", "refit_loss_", "refit_loss_x", "refit_train_seconds_2"):
        assert refit_loss_branch(other) is None
    # Branch order, not string order (10 after 2); branch 0 is the dashed refit line.
    assert soup_branch_losses(["refit_loss_10", "refit_loss", "refit_loss_2", "loss"]) == [
        "refit_loss_2", "refit_loss_10"]


def test_soup_plan_forks_inside_the_refit_or_not_at_all() -> None:
    config = TrainConfig()  # three branches forked at half the refit
    assert soup_plan(config, 10) == (5, 3)
    assert soup_plan(config, 1) == (0, 1)  # no epoch to fork at before the end
    assert soup_plan(config.model_copy(update={"soup_branches": 1}), 10) == (0, 1)
    assert branch_seed(7, 0) == 7 and len({branch_seed(7, b) for b in range(4)}) == 4
