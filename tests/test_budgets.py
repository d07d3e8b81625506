"""The budget protocol's figures on synthetic races whose answers are known."""

import pytest

from seqis.experiments.budgets import analyse_budgets
from seqis.experiments.tables import budget_section, equivalent_cell, headline, saving_cell, time_verdict

BUDGETS = (1.0, 0.8, 0.67, 0.5)


def _runs(sampler, losses_by_budget, seeds=(0, 1, 2), spread=0.0, steps_per_budget=1000, seconds=10.0):
    """Records with mean loss ``losses_by_budget[b]``; seed s adds ``(s - 1) * spread``."""
    return [
        {
            "sampler": sampler,
            "budget": b,
            "seed": s,
            "final_val_loss": loss + (s - 1) * spread,
            "final_val_acc": 0.9,
            "steps": steps_per_budget * b,
            "wall_time_s": seconds * b,
        }
        for b, loss in losses_by_budget.items()
        for s in seeds
    ]


UNIFORM = {1.0: 0.30, 0.8: 0.31, 0.67: 0.32, 0.5: 0.34}


def test_a_sampler_as_good_at_two_thirds_saves_one_and_a_half():
    fast = {1.0: 0.29, 0.8: 0.295, 0.67: 0.30, 0.5: 0.33}
    result = analyse_budgets(_runs("uniform", UNIFORM) + _runs("fast", fast))["figures"]["fast"]
    assert result["lossless"]["saving"] == pytest.approx(1 / 0.67)
    assert result["lossless"]["steps_saving"] == pytest.approx(1 / 0.67)
    assert result["lossless"]["kind"] == "exact"
    # uniform reaches the sampler's 0.29 nowhere in its range: worth more than its full budget
    assert result["equivalent"]["kind"] == "above"


def test_interpolation_between_budgets_and_the_equivalent_uniform_budget():
    mid = {1.0: 0.315, 0.8: 0.33, 0.67: 0.34, 0.5: 0.36}
    worse = analyse_budgets(_runs("uniform", UNIFORM) + _runs("mid", mid))["figures"]["mid"]
    assert worse["lossless"]["saving"] is None and worse["lossless"]["gap_at_full"] == pytest.approx(0.015)
    assert saving_cell(worse["lossless"]).startswith("< 1")
    # uniform's loss falls to 0.315 between budgets 0.8 (0.31) and 0.67 (0.32): at 0.67 + 0.13 * 0.5
    assert worse["equivalent"]["budget"] == pytest.approx(0.735)


def test_seed_spread_sets_the_tolerance():
    close = {1.0: 0.304, 0.8: 0.31, 0.67: 0.33, 0.5: 0.35}
    tight = analyse_budgets(_runs("uniform", UNIFORM) + _runs("close", close))["figures"]["close"]
    assert tight["lossless"]["saving"] is None  # 0.304 > 0.300 with no spread
    loose = analyse_budgets(_runs("uniform", UNIFORM, spread=0.005) + _runs("close", close))["figures"][
        "close"
    ]
    assert loose["lossless"]["tolerance"] == pytest.approx(0.005)
    # uniform itself reaches 0.305 at budget 0.9, the sampler at 0.8 + 0.005 / 0.006 * 0.2
    assert loose["lossless"]["uniform_budget"] == pytest.approx(0.9)
    assert loose["lossless"]["saving"] == pytest.approx(0.9 / (0.8 + (0.305 - 0.31) * 0.2 / (0.304 - 0.31)))


def test_a_sampler_identical_to_uniform_saves_exactly_one():
    """stdlib's and names' shape: the tolerance must not hand a copy of uniform a 'saving'."""
    copy = analyse_budgets(_runs("uniform", UNIFORM, spread=0.01) + _runs("copy", UNIFORM, spread=0.01))
    lossless = copy["figures"]["copy"]["lossless"]
    assert lossless["uniform_budget"] < 1 and lossless["saving"] == pytest.approx(1.0)
    assert lossless["steps_saving"] == pytest.approx(1.0) and lossless["time_saving"] == pytest.approx(1.0)
    worse = analyse_budgets(
        _runs("uniform", UNIFORM, spread=0.01) + _runs("worse", {b: v + 0.002 for b, v in UNIFORM.items()})
    )
    assert worse["figures"]["worse"]["lossless"]["saving"] < 1


def test_better_than_uniform_at_the_smallest_budget_is_a_bound():
    strong = {1.0: 0.25, 0.8: 0.26, 0.67: 0.27, 0.5: 0.28}
    result = analyse_budgets(_runs("uniform", UNIFORM) + _runs("strong", strong))
    figure = result["figures"]["strong"]["lossless"]
    assert figure["kind"] == "at_most" and figure["saving"] == pytest.approx(2.0)
    assert saving_cell(figure).startswith("≥ 2.00×")
    section = budget_section({"budget_protocol": result})
    assert "n=3" in section and "half the min–max range" in section


def test_pruning_saves_more_steps_than_budget():
    pruned = _runs("prune", {1.0: 0.30, 0.8: 0.31, 0.67: 0.32, 0.5: 0.34}, steps_per_budget=800, seconds=9.0)
    figure = analyse_budgets(_runs("uniform", UNIFORM) + pruned)["figures"]["prune"]["lossless"]
    assert figure["saving"] == pytest.approx(1.0)
    assert figure["steps_saving"] == pytest.approx(1.25) and figure["time_saving"] == pytest.approx(10 / 9)


def test_a_pruned_run_worth_more_uniform_steps_than_its_own():
    """fashion-mnist-budget's shape: prune's full budget spends 76% of the steps and ends between
    uniform's 0.8 and full budgets, so each of its steps is worth more than one of uniform's."""
    pruned = _runs("prune", {1.0: 0.305, 0.8: 0.315, 0.67: 0.325, 0.5: 0.34}, steps_per_budget=760)
    figure = analyse_budgets(_runs("uniform", UNIFORM) + pruned)["figures"]["prune"]["equivalent"]
    assert figure["budget"] == pytest.approx(0.9)  # uniform: 0.31 at 0.8, 0.30 at 1
    assert figure["steps_worth"] == pytest.approx(900 / 760)
    assert equivalent_cell(figure) == "0.90 (steps worth 1.18×)"


def test_uniform_matching_at_the_smallest_budget_makes_the_saving_a_bound():
    flat = {1.0: 0.300, 0.8: 0.301, 0.67: 0.302, 0.5: 0.303}  # inside the tolerance everywhere
    late = {1.0: 0.300, 0.8: 0.320, 0.67: 0.330, 0.5: 0.340}
    both = analyse_budgets(_runs("uniform", flat, spread=0.01) + _runs("copy", flat))["figures"]["copy"]
    assert both["lossless"]["kind"] == "both" and both["lossless"]["saving"] is None
    assert saving_cell(both["lossless"]).startswith("– (uniform and the sampler both match")
    upper = analyse_budgets(_runs("uniform", flat, spread=0.01) + _runs("late", late))["figures"]["late"]
    assert upper["lossless"]["kind"] == "upper" and saving_cell(upper["lossless"]).startswith("≤ ")


def _race(records):
    """A race summary as compare's report reads it, around synthetic budget records."""
    return {
        "data": "synthetic",
        "seeds": 3,
        "best_lr": {"uniform": 0.004, "same": 0.004},
        "budget_protocol": analyse_budgets(records),
    }


def test_the_headline_says_when_a_time_ratio_is_noise_and_no_row_contradicts_itself():
    """digits' shape: the same steps, a faster clock by chance, and a full-budget loss a hair
    below uniform's; it read '1.00x' beside 'equivalent budget > 1 (better than uniform)'."""
    uniform, near = {1.0: 0.8166, 0.5: 1.3569}, {1.0: 0.8142, 0.5: 1.3569}  # the digits race's means
    records = _runs("uniform", uniform, spread=0.0132, seconds=10.0) + _runs("same", near, seconds=9.7)
    race = _race(records)
    figures = race["budget_protocol"]["figures"]["same"]
    assert figures["lossless"]["steps_saving"] == pytest.approx(1.0, abs=0.005)
    assert figures["equivalent"]["kind"] == "within"
    assert equivalent_cell(figures["equivalent"]).startswith("≈ 1")
    line = headline(race).splitlines()[1]
    assert "lossless saving" in line and "[same steps: the time ratio is noise, not a gain]" in line
    better = {b: v - 0.02 for b, v in UNIFORM.items()}
    race = _race(_runs("uniform", UNIFORM, spread=0.005) + _runs("same", better))
    assert race["budget_protocol"]["figures"]["same"]["equivalent"]["kind"] == "above"
    assert "noise" not in headline(race)


def test_a_time_speedup_is_noise_when_its_steps_are_the_same_or_its_seeds_disagree():
    same_steps = {"median": 1.0, "min": 1.0, "max": 1.0}
    assert time_verdict({"median": 1.15, "min": 1.03, "max": 1.23}, same_steps) == "same steps"
    assert time_verdict({"median": 1.05, "min": 0.97, "max": 1.2}, {"median": 1.1}) == "spread covers 1"
    assert time_verdict({"median": 1.3, "min": 1.2, "max": 1.4}, {"median": 1.3}) == ""
