"""Race tables on synthetic curves whose answers are known: n per cell, bound kinds, no rounding."""

from seqis.experiments.analysis import auto_targets, speedups
from seqis.experiments.tables import cell


def _run(sampler, seed, losses, every=10, seconds_per_step=0.1):
    rows = [{"step": 0, "wall_time_s": 0.0, "val_loss": 10.0}]
    rows += [
        {"step": every * (i + 1), "wall_time_s": every * (i + 1) * seconds_per_step, "val_loss": v}
        for i, v in enumerate(losses)
    ]
    return {
        "sampler": sampler,
        "seed": seed,
        "rows": rows,
        "steps": rows[-1]["step"],
        "wall_time_s": rows[-1]["wall_time_s"],
    }


UNIFORM = [3.0, 2.5, 2.0, 1.5, 1.2, 1.0]  # reaches 1.5 at step 40


def test_a_sampler_exactly_one_and_a_half_times_faster():
    records = [_run("uniform", s, UNIFORM) for s in range(3)] + [
        _run("fast", s, [2.0, 1.5, 1.4, 1.3]) for s in range(3)
    ]
    stat = speedups(records, [1.5], key="step")["fast"]["1.5"]
    assert stat["median"] == 2.0 and stat["n"] == 3 and stat["kind"] == "exact"
    records = [_run("uniform", s, [3.0, 2.5, 1.5]) for s in range(3)] + [
        _run("fast", s, [2.0, 1.5]) for s in range(3)
    ]
    stat = speedups(records, [1.5], key="step")["fast"]["1.5"]
    assert stat["median"] == 1.5 and cell(stat) == "1.50 n=3"


def test_a_sampler_that_never_reaches_gives_an_upper_bound():
    records = [_run("uniform", s, UNIFORM) for s in range(2)] + [
        _run("slow", s, [2.8, 2.6, 2.4]) for s in range(2)
    ]
    stat = speedups(records, [1.5], key="step")["slow"]["1.5"]
    assert stat["kind"] == "upper" and stat["median"] == 40 / 30 and cell(stat) == "≤1.33 n=2"


def test_seeds_that_split_and_pairs_where_neither_reaches_are_counted():
    uniform = [_run("uniform", 0, UNIFORM), _run("uniform", 1, [3.0, 2.9]), _run("uniform", 2, [3.0, 2.9])]
    sampler = [
        _run("s", 0, [2.9, 2.8, 2.7, 2.6, 2.5, 2.4]),
        _run("s", 1, [2.0, 1.4]),
        _run("s", 2, [2.9, 2.95]),
    ]
    stat = speedups(uniform + sampler, [1.5], key="step")["s"]["1.5"]
    # seed 0: sampler never (upper), seed 1: uniform never (lower), seed 2: neither
    assert (stat["n"], stat["lower_bounds"], stat["upper_bounds"], stat["neither_reached"]) == (2, 1, 1, 1)
    assert stat["median"] is None and cell(stat) == "– (bounds both ways) n=2, 1 neither"
    nobody = speedups(uniform[2:] + sampler[2:], [1.5], key="step")["s"]["1.5"]
    assert cell(nobody) == "– (neither reached: 1 of 1)"


def test_targets_are_never_rounded_below_a_seeds_own_value():
    seeds = [[0.30000012], [0.30000049], [0.3000009]]
    runs = [[{"step": 0, "val_loss": 1.0}, {"step": 10, "val_loss": v[0]}] for v in seeds]
    target = auto_targets(runs)[-1]
    assert target == 0.30000049  # the middle seed reaches its own target
    assert sum(v[0] <= target for v in seeds) == 2
