import ast
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from seqis.cli import main
from seqis.errors import ConfigError
from seqis.experiments.analysis import (
    GAIN_FIELDS,
    auto_targets,
    best_lrs,
    history_record,
    predicted_while_on,
    scheduled_prediction,
    speedups,
    time_to_target,
)
from seqis.experiments.report import write_report
from seqis.importance.config import MiningConfig
from seqis.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--layers", "1", "--embed", "8", "--no-progress", "--threads", "1"]


def _rows(points):
    return [{"step": i, "wall_time_s": t, "val_loss": v} for i, (t, v) in enumerate(points)]


def test_time_to_target_first_crossing():
    rows = _rows([(0, 3.0), (1, 2.0), (2, 2.5), (3, 1.0)])
    assert time_to_target(rows, 2.0) == 1
    assert time_to_target(rows, 0.5) is None
    rows[1]["step"] = 50
    assert time_to_target(rows, 2.0, key="step") == 50


def test_speedups_paired_by_seed_with_censoring():
    uni0 = _rows([(0, 3.0), (10, 2.0), (20, 1.0)])
    fim0 = _rows([(0, 3.0), (5, 2.0), (10, 1.0)])
    uni1 = _rows([(0, 3.0), (10, 2.0), (30, 1.5)])
    fim1 = _rows([(0, 3.0), (20, 2.0), (25, 1.8)])  # never reaches 1.0
    records = [
        {"sampler": "uniform", "seed": 0, "rows": uni0, "wall_time_s": 20},
        {"sampler": "fim", "seed": 0, "rows": fim0, "wall_time_s": 10},
        {"sampler": "uniform", "seed": 1, "rows": uni1, "wall_time_s": 30},
        {"sampler": "fim", "seed": 1, "rows": fim1, "wall_time_s": 25},
    ]
    result = speedups(records, [2.0, 1.0, 0.1])
    s2 = result["fim"]["2.0"]
    assert s2["median"] == pytest.approx((2.0 + 0.5) / 2) and s2["min"] == 0.5 and s2["max"] == 2.0
    s1 = result["fim"]["1.0"]
    # seed 0: 20/10 = 2; seed 1: uniform never reached 1.0 (1.5 at best), fim neither
    assert s1["n"] == 1 and s1["neither_reached"] == 1 and s1["median"] == 2.0
    records[3]["rows"] = _rows([(0, 3.0), (20, 0.9)])
    records[2]["rows"] = uni0
    s1 = speedups(records, [1.0])["fim"]["1.0"]
    assert s1["censored"] == 0 and s1["median"] == pytest.approx((2.0 + 1.0) / 2)
    records[3]["rows"] = fim1  # fim misses: its time is taken as its whole run (25 s) -> bound
    s1 = speedups(records, [1.0])["fim"]["1.0"]
    assert s1["censored"] == 1 and s1["min"] == pytest.approx(20 / 25)
    assert speedups(records, [0.1])["fim"]["0.1"]["median"] is None


def test_auto_targets_are_uniform_running_bests_at_step_fractions():
    rows_a = _rows([(0, 4.0), (30, 3.0), (60, 2.0), (90, 1.0), (100, 1.1)])  # steps 0..4
    rows_b = _rows([(0, 4.0), (30, 3.2), (60, 2.2), (90, 1.2), (100, 1.3)])
    # 30% of 4 steps -> step 1.2: bests 3.0 and 3.2; 60% -> step 2; 90%, 100% -> running best 1.0/1.2
    assert auto_targets([rows_a, rows_b]) == [3.1, 2.1, 1.1, 1.1]  # no progress after 90%
    acc = [dict(r, val_acc=a) for r, a in zip(rows_a, [0.1, 0.5, 0.7, 0.6, 0.9], strict=True)]
    assert auto_targets([acc], "val_acc") == [0.5, 0.7, 0.7, 0.9]  # 0.6 at step 3 is no best
    assert time_to_target(acc, 0.7, metric="val_acc") == 60


def test_best_learning_rate_per_sampler():
    def run(sampler, lr, seed, best):
        return {"sampler": sampler, "lr": lr, "seed": seed, "rows": _rows([(0, 3.0), (1, best)])}

    records = [run("uniform", 1e-3, s, 1.0 + s) for s in range(3)]
    records += [run("uniform", 3e-3, s, 0.9 + s) for s in range(3)]
    records += [run("fim", 1e-3, s, 0.5 + s) for s in range(3)]
    records += [run("fim", 3e-3, s, [0.1, 9.0, 9.0][s]) for s in range(3)]  # one lucky seed only
    assert best_lrs(records) == {"uniform": 3e-3, "fim": 1e-3}


def test_compare_end_to_end(tmp_path):
    out = tmp_path / "race"
    code = main(
        [
            "compare",
            "--data",
            "digits:rows",
            "--samplers",
            "uniform,fim,loss",
            "--seeds",
            "2",
            "--steps",
            "40",
            "--eval-every",
            "10",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 6 and summary["metrics"] == ["val_loss", "train_eval_loss", "val_acc"]
    assert set(summary["speedup"]["val_loss"]) == {"fim", "loss"}
    assert set(summary["step_speedup"]["val_acc"]) == {"fim", "loss"}
    for name in ("report.md", "val_loss_vs_time.png", "train_eval_loss_vs_time.png", "speedups.png"):
        assert (out / name).stat().st_size > 500, name
    report = (out / "report.md").read_text()
    assert "| fim |" in report and "ceiling" in report and "training steps" in report
    assert "validation accuracy" in report and "Learning-rate grid" in report
    # the samplers' order is rotated per seed
    race = json.loads((out / "race.json").read_text())
    assert [r.split("-")[0] for r in race["run_order"]] == [
        "uniform",
        "fim",
        "loss",
        "fim",
        "loss",
        "uniform",
    ]
    # the report can be rebuilt from the run folders alone
    (out / "report.md").unlink()
    rebuilt = write_report(out)
    assert rebuilt["speedup"] == summary["speedup"] and (out / "report.md").exists()
    seeds = {}
    for r in summary["runs"]:
        seeds.setdefault(r["seed"], set()).add(r["init_params_sha256"])
        assert r["final_val_acc"] is not None and r["final_train_eval_loss"] is not None
    assert all(len(v) == 1 for v in seeds.values())


def test_compare_learning_rate_grid(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["compare", "--data", "digits:rows", "--samplers", "fim", "--seeds", "1", "--steps", "20"]
    assert main([*args, "--eval-every", "10", "--lrs", "0.001,0.01", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 4 and set(summary["best_lr"]) == {"uniform", "fim"}
    assert sum(r["tuned"] for r in summary["runs"]) == 2
    assert "lr 0.001 | lr 0.01" in (out / "report.md").read_text()
    assert main([*args, "--lrs", "0.1,x", "--out", str(out), *TINY]) == 2
    assert "--lrs must be" in capsys.readouterr().err


def test_per_sampler_learning_rates_with_budgets_write_the_whole_report(tmp_path):
    """The fashion-mnist-budget race's shape: --lrs uniform=…,fim=… and --budgets (the report crashed)."""
    out = tmp_path / "budgets"
    args = ["compare", "--data", "digits:rows", "--samplers", "fim", "--seeds", "1", "--steps", "20"]
    extra = ["--lrs", "uniform=0.01,fim=0.005", "--budgets", "1,0.5", "--schedule", "cosine"]
    assert main([*args, "--eval-every", "10", *extra, "--out", str(out), *TINY]) == 0
    report = (out / "report.md").read_text()
    assert "## Budget protocol" in report and "lr 0.005 | lr 0.01" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_lr"] == {"uniform": 0.01, "fim": 0.005} and "budget_protocol" in summary
    assert sorted((r["sampler"], r["budget"], r["steps"]) for r in summary["runs"]) == [
        ("fim", 0.5, 10),
        ("fim", 1.0, 20),
        ("uniform", 0.5, 10),
        ("uniform", 1.0, 20),
    ]
    assert main([*args, *extra[:2], "--budgets", "0.8,0.5", "--out", str(out), *TINY]) == 2  # no reference


def test_diagnose_end_to_end(tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", "--data", "digits:rows", "--steps", "240", "--out", str(out), *TINY]) == 0
    report = json.loads((out / "diagnosis.json").read_text())
    assert report["ceiling"] >= 1.0 and report["cost_ratio"] > 0
    judgement = report["judgement"]  # half the plan: its end says nothing of what is to come
    assert judgement["step"] == 120 and judgement["noise_scale"] > 0 and judgement["horizon"] == 120
    assert 1.0 <= judgement["step_gain"] <= 1 + judgement["noise_scale"] / 64
    assert f"{judgement['step_gain']:.3f}x fewer steps" in report["verdict"]
    assert (out / "factors.png").stat().st_size > 500 and (out / "switch.png").stat().st_size > 500
    assert "after 120 steps the switch keeps importance sampling" in capsys.readouterr().out
    assert report["padded_over_real"] == {"random": 1.0, "bucket": 1.0} and "padded" not in report["verdict"]
    # judge an existing run's newest checkpoint, with its own settings, instead of training again
    again = tmp_path / "again"
    assert main(["diagnose", "--checkpoint", str(out), "--out", str(again), *TINY]) == 0
    assert json.loads((again / "diagnosis.json").read_text())["judgement"] == judgement
    assert main(["diagnose", "--checkpoint", str(tmp_path / "nothing"), "--out", str(again)]) == 2
    assert "no saved run configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ["--anneal", "0.25"],  # the uniform tail from step 150: the miner's, not a second rule
        ["--sampler", "presample"],  # the pool the switch sized, and its cost
        ["--pack", "--cost-aware"],
    ],
)
def test_diagnose_says_what_train_decides_at_the_same_step(tmp_path, extra):
    """Train straight through a 200-step plan; diagnose the same run at its decisions and in the
    uniform tail, by training the first steps itself and from a segment's checkpoint: the switch
    state diagnose reports is the one train was in after those steps."""
    run = ["--data", "digits:rows", "--steps", "200", "--eval-every", "10", "--batch-size", "32"]
    run += ["--schedule", "cosine", "--lr", "0.01", *TINY, *extra]  # the switch turns on by step 100
    assert main(["train", *run, "--out", str(tmp_path / "straight")]) == 0
    rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    active = {int(r.split(",")[0]): r.split(",")[header.index("is_active")] == "1" for r in rows[1:]}
    for step in (100, 160):
        out = tmp_path / f"diagnose-{step}"
        assert main(["diagnose", *run, "--stop-at", str(step), "--out", str(out)]) == 0
        judged = json.loads((out / "diagnosis.json").read_text())["judgement"]
        assert judged["step"] == step and judged["active"] == active[step], (step, judged)
    segment = tmp_path / "segment"
    assert main(["train", *run, "--stop-at", "100", "--out", str(segment)]) == 0
    assert main(["diagnose", "--checkpoint", str(segment), "--out", str(tmp_path / "from-checkpoint")]) == 0
    judged = json.loads((tmp_path / "from-checkpoint" / "diagnosis.json").read_text())["judgement"]
    assert judged["active"] == active[100]


def test_a_signal_stops_the_whole_race(tmp_path, monkeypatch, capsys):
    from seqis.experiments import race

    calls = []

    def interrupted_train(config, data=None):
        calls.append(Path(config.out).name)  # the run's folder: sampler-lr-seed
        return {"stopped_by": "signal"}

    monkeypatch.setattr(race, "train", interrupted_train)
    args = ["compare", "--data", "digits:rows", "--samplers", "fim", "--seeds", "2", "--steps", "5"]
    assert main([*args, "--out", str(tmp_path / "race"), *TINY]) == 130
    assert len(calls) == 1 and calls[0].startswith("uniform-lr")
    assert "race stopped by a signal" in capsys.readouterr().out


def _results_script():
    """``scripts/results.py``, loaded from its path: it lives outside the package."""
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_driver_runs_skips_current_races_and_writes_tables(tmp_path, monkeypatch, capsys):
    results = _results_script()
    monkeypatch.setattr(results, "ROOT", tmp_path)
    tiny = (
        "--data digits:rows --samplers uniform,fim --seeds 1 --steps 20 --eval-every 10 --hidden 8 --layers 1"
    )
    monkeypatch.setattr(results, "EXPERIMENTS", {"tiny": tiny})
    monkeypatch.setattr(results, "README_RACES", ("tiny",))
    (tmp_path / "README.md").write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nrest\n")
    results.main(["--only", "tiny"])
    race = tmp_path / "docs" / "results" / "tiny"
    meta = json.loads((race / "race.json").read_text())
    assert meta["command"].endswith("--out docs/results/tiny") and meta["race_duration_s"] >= 0
    assert not list(race.glob("runs/*/checkpoints"))  # only what the report cites is kept
    assert results.is_current("tiny")
    # the results page keeps its hand-written narrative; only the block between the markers changes
    page = tmp_path / "docs" / "results" / "README.md"
    assert "All races together took" in page.read_text()
    page.write_text("# Results\n\nnarrative\n\n" + page.read_text().split("\n\n", 1)[1] + "more\n")
    results.main(["--only", "tiny"])
    assert "tiny: current, report rebuilt" in capsys.readouterr().err
    readme = (tmp_path / "README.md").read_text()
    assert "| [tiny](docs/results/tiny/report.md) | fim | 0.002 |" in readme and readme.endswith("rest\n")
    text = page.read_text()
    assert text.startswith("# Results\n\nnarrative\n\n<!-- results:begin -->") and text.endswith("more\n")
    assert "| [tiny](tiny/report.md) | fim | 0.002 |" in text and "All races together took" in text
    monkeypatch.setattr(results, "EXPERIMENTS", {"tiny": tiny.replace("--steps 20", "--steps 30")})
    assert not results.is_current("tiny")  # other arguments: the race must run again


def test_committed_results_tables_are_what_the_script_writes():
    """The README's and the results page's tables come from the committed summaries, untouched;
    the budget protocol leads both."""
    results = _results_script()
    readme, page = (
        p.read_text().split(results.BEGIN, 1)[1].split(results.END, 1)[0]
        for p in (ROOT / "README.md", ROOT / "docs" / "results" / "README.md")
    )
    lead = results.budget_summary("docs/results/", compact=True)
    assert lead and readme.index(lead) < readme.index(results.POINTER)
    assert set(results.README_RACES) <= set(results.EXPERIMENTS)  # a renamed race drops no README row
    page_lead, constant = results.budget_summary(), results.summarize()
    assert page.index(page_lead) < page.index(constant) < page.index(results.prediction_check())


def test_history_rows_old_lists_and_new_records_read_alike():
    # (step, on, B, g, at uniform's lr, re-tuned); the oldest summaries lack the fifth
    old = [[50, False, 30.5, 1.0, 1.0], [100, True, 300.0, 2.0, 1.5], [150, True, 400.0, 2.0, 2.0]]
    newer = [
        [50, False, 30.5, 1.0, 1.0, 1.0],
        [100, True, 300.0, 2.0, 1.33, 1.5],
        [150, True, 4e2, 2.0, 1.5, 2.0],
    ]
    record = {
        "step": 100,
        "active": True,
        "noise_scale": 300.0,
        "variance_cut": 2.0,
        "predicted_step_gain": 1.33,
        "predicted_step_gain_lr_retuned": 1.5,
    }
    assert history_record(newer[1]) == record == history_record(record)
    assert history_record(old[1]) == {**record, "predicted_step_gain": None}
    records = [history_record(row) for row in newer]
    expected = {"predicted_step_gain": 2 - 1 / 1.75, "predicted_step_gain_lr_retuned": 1.75}
    for rows in (old, newer, records):
        assert predicted_while_on({"noise_history": rows}) == expected  # medians over the active rows
    assert predicted_while_on({}) == {"predicted_step_gain": None, "predicted_step_gain_lr_retuned": None}
    gain = {"step": 50, "gain": 1.12, "active": False}
    assert history_record([50, 1.12, False], GAIN_FIELDS) == gain == history_record(gain, GAIN_FIELDS)


def test_experiment_layers_import_downward_only():
    """analysis imports neither report nor race; report does not import race."""
    forbidden = {"analysis": {"report", "race"}, "report": {"race"}}
    for name, upper in forbidden.items():
        tree = ast.parse((ROOT / "src" / "seqis" / "experiments" / f"{name}.py").read_text())
        imported = {
            n.module.rsplit(".", 1)[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        }
        imported |= {
            a.name.rsplit(".", 1)[-1] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        assert not imported & upper, name


def test_tables_name_runs_by_their_labels():
    """--samplers presample trains runs labelled presample:fim: the report crashed looking for 'presample'."""
    from seqis.experiments.analysis import run_label

    assert [run_label(s) for s in ("uniform", "presample", "importance:loss", "prune", "subset")] == [
        "uniform",
        "presample:fim",
        "loss",
        "prune",
        "subset",
    ]
    summary = json.loads((ROOT / "docs" / "results" / "names-budget-pilot" / "summary.json").read_text())
    assert "presample:fim" in summary["samplers"] and set(summary["samplers"]) == set(summary["best_lr"])


def test_a_races_factor_names_its_runs(tmp_path):
    """compare --factor loss --samplers importance trains 'loss' runs: the tables must find them."""
    out = tmp_path / "factor"
    args = ["compare", "--data", "digits:rows", "--samplers", "importance", "--factor", "loss"]
    args += ["--seeds", "1"]
    assert main([*args, "--steps", "10", "--eval-every", "5", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samplers"] == ["uniform", "loss"] and set(summary["best_lr"]) == {"uniform", "loss"}


def test_scheduled_prediction_replays_the_recorded_decisions_under_the_runs_schedule():
    def summary(schedule: str, active: bool, lr_scale: str = "none") -> dict:
        history = [
            {
                "step": s,
                "active": active,
                "noise_scale": 500.0,
                "variance_cut": 2.0,
                "predicted_step_gain": 1.5,
                "predicted_step_gain_lr_retuned": 2.0,
            }
            for s in range(0, 1000, 50)
        ]
        mining = MiningConfig(lr_scale=lr_scale)
        config = asdict(TrainConfig(steps=1000, schedule=schedule, warmup=0.0, batch_size=64, mining=mining))
        return {"steps": 1000, "config": config, "data_stats": {"train": 5000}, "noise_history": history}

    assert scheduled_prediction(summary("constant", True)) == pytest.approx(1.5)  # 2 - 1/G
    assert scheduled_prediction(summary("constant", False)) == pytest.approx(1.0)  # the switch stayed off
    assert 1.0 < scheduled_prediction(summary("cosine", True)) < 1.5
    # --lr-scale linear: the multiplier rises towards G = 2, so the run's gain rises towards G
    assert 1.5 < scheduled_prediction(summary("constant", True, "linear")) < 2.0
    assert scheduled_prediction({"steps": 10, "config": {}, "noise_history": []}) is None


def _budget_race(lr_scale: str, active: float, saving: float) -> dict:
    """A race summary with one full-budget fim run, as scripts/results.py reads it."""
    run = {
        "sampler": "fim",
        "tuned": True,
        "budget": 1.0,
        "lr_scale": lr_scale,
        "is_active_share": active,
        "predicted_step_gain": 1.1,
        "predicted_step_gain_lr_retuned": 1.6,
        "scheduled_step_gain": None,
    }
    lossless = {"kind": "exact", "steps_saving": saving}
    return {
        "samplers": ["uniform", "fim"],
        "runs": [run],
        "budget_protocol": {"figures": {"fim": {"lossless": lossless}}},
    }


def test_prediction_check_reads_the_lr_rule_from_the_runs_and_sets_stayed_off_races_apart(monkeypatch):
    """Races under the default auto were judged with the kept-rate gain (the rule was read from the
    command string), and races where the switch stayed off counted as hits (1.00 against 1.00)."""
    results = _results_script()
    # auto resolved to linear in the runs' own configs; the command names no --lr-scale
    assert results._prediction_pair(_budget_race("linear", 0.6, 1.5), "fim") == (1.6, 1.5, "exact")
    assert results._prediction_pair(_budget_race("none", 0.6, 1.1), "fim") == (1.1, 1.1, "exact")
    races = {"on": _budget_race("linear", 0.6, 1.5), "off": _budget_race("linear", 0.0, 1.0)}
    monkeypatch.setattr(results, "EXPERIMENTS", dict.fromkeys(races, ""))
    monkeypatch.setattr(results, "finished", races.get)
    check = results.prediction_check()
    assert "Importance sampling was on in 1 races: 1 within ±25%" in check
    assert "In 1 races the switch kept it off" in check and "| – (never on) |" in check


def test_the_loss_plots_draw_the_full_budget_runs(monkeypatch, tmp_path):
    """Budget 0.5's curves stopped the plots at half the steps while the targets were the full runs'."""
    from seqis.experiments import report

    drawn = {}
    monkeypatch.setattr(report, "plot_race", lambda curves, key, png, *a: drawn.setdefault(key, curves))
    monkeypatch.setattr(report, "plot_speedups", lambda *a: None)
    monkeypatch.setattr(report, "plot_budget_protocol", lambda *a: None)

    def run(sampler, budget):
        rows = [{"step": s, "wall_time_s": s / 10, "val_loss": 1 / (1 + s)} for s in range(0, 401, 100)]
        rows = [r for r in rows if r["step"] <= 400 * budget]
        return {"sampler": sampler, "lr": 0.002, "budget": budget, "rows": rows}

    records = [run(s, b) for s in ("uniform", "fim") for b in (1.0, 0.5)]
    stat = {"median": 1.0, "min": 1.0, "max": 1.0}
    speedup = {"val_loss": {"fim": {"0.01": stat}}}
    result = {
        "data": "synthetic", "model": "gru", "seeds": 1, "samplers": ["uniform", "fim"],
        "best_lr": {"uniform": 0.002, "fim": 0.002}, "metrics": ["val_loss"], "targets": {"val_loss": [0.01]},
        "speedup": speedup, "step_speedup": speedup, "budget_protocol": {},
    }  # fmt: skip
    images = report._plot(result, records, tmp_path)
    assert images[0].endswith("(budget.png)")
    assert {max(r["step"] for r in rows) for runs in drawn["step"].values() for rows in runs} == {400}


def test_the_demo_races_the_default_against_uniform_and_draws_one_picture(tmp_path):
    """make demo showed 17-130 steps of one run, 'IS active 0%', and no uniform baseline."""
    from seqis.data.registry import DataOptions
    from seqis.experiments.demo import demo
    from seqis.models.rnn import ModelConfig

    model = ModelConfig(cell="gru", hidden_size=8, num_layers=1)
    config = TrainConfig(
        data="digits:rows", steps=120, schedule="cosine", warmup=0.05, batch_size=32, lr=0.01, eval_every=20,
        threads=1, progress=False, out=str(tmp_path), model=model, data_options=DataOptions(val_size=200),
    )  # fmt: skip
    result = demo(config, seeds=2)
    assert result["verdict"].startswith("fim ends at val loss") and "uniform's" in result["verdict"]
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert result["runs"] == ["fim-seed0", "fim-seed1", "uniform-seed0", "uniform-seed1"]
    with pytest.raises(ConfigError, match="the demo races a sampler that keeps factors"):
        demo(config.with_sampler("uniform"))


def test_the_demo_verdict_times_uniform_to_its_own_first_arrival_and_spans_cover_always_on_runs():
    """Review: dividing by uniform's whole run credited the sampler with uniform's wobbles, and
    --always-on runs (no switch decisions) drew no importance-sampling spans at all."""
    from seqis.experiments.demo import demo_verdict, on_spans
    from seqis.importance.config import MiningConfig

    def rows(points, active=0):
        return [
            {"step": 10 * i, "wall_time_s": t, "val_loss": v, "is_active": active}
            for i, (t, v) in enumerate(points)
        ]

    uniform = [{"summary": {"final_val_loss": 0.5}, "rows": rows([(0, 2.0), (5, 0.5), (8, 0.55), (10, 0.5)])}]
    fim = [{"summary": {"final_val_loss": 0.45, "is_active_share": 1.0},
            "rows": rows([(0, 2.0), (2.5, 0.49), (10, 0.45)])}]  # fmt: skip
    assert "2.00x sooner" in demo_verdict(uniform, fim, "fim")
    config = TrainConfig(
        data="digits:rows", steps=20, mining=MiningConfig(sampler="importance", always_on=True)
    )
    summary = {"config": config.to_dict(), "data_stats": {"train": 100}, "steps": 20}
    assert on_spans(summary, rows([(0, 2.0), (1, 1.0), (2, 0.5)], active=1)) == [(0, 2)]


def test_a_race_names_each_samplers_batching_and_shows_what_it_paid(tmp_path, ts_file):
    """--samplers uniform,uniform@bucket: the length lever against random batches, in one race."""
    out = tmp_path / "buckets"
    args = ["compare", "--data", f"ts:{ts_file}", "--samplers", "uniform@bucket", "--seeds", "1"]
    args += ["--steps", "20", "--batch-size", "4", "--bucket-pool", "3", "--eval-every", "10"]
    assert main([*args, "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samplers"] == ["uniform", "uniform@bucket"]
    runs = {r["sampler"]: r for r in summary["runs"]}
    assert runs["uniform@bucket"]["padded_over_real"] < runs["uniform"]["padded_over_real"]


def test_sampler_specs_and_replays_that_would_mislead_are_refused():
    """Review: fim@+cost dropped +cost silently; replay:fim at another peak rate than fim's is no
    control of fim's schedule."""
    from seqis.experiments.race import RaceConfig

    with pytest.raises(ConfigError, match=r"\+cost follows a batching"):
        TrainConfig().with_sampler("fim@+cost")
    assert TrainConfig().with_sampler("fim@bucket+cost").mining.cost_aware
    with pytest.raises(ConfigError, match="replay:fim must train at fim's peak rate"):
        RaceConfig(samplers="uniform,fim,replay:fim", lrs="uniform=0.004,fim=0.004,replay:fim=0.002")
    RaceConfig(samplers="uniform,fim,replay:fim", lrs="uniform=0.002,fim=0.004,replay:fim=0.004")


def test_diagnose_and_train_name_the_length_lever_where_random_batches_pad(tmp_path, ts_file, capsys):
    """Issue 27: the padding a random batch pays for is a cost no scheme touches; say what buckets save."""
    from seqis.experiments.diagnose import _length_advice
    from seqis.training.trainer import length_lever

    config = TrainConfig(data="toy", batch_size=8)
    lever = length_lever(config, torch.tensor([2, 40] * 50))
    assert lever["random"] > 1.5 * lever["bucket"]
    assert "batching bucket would make a step up to" in _length_advice(config, lever)
    assert _length_advice(config.with_sampler("fim@bucket"), lever) == ""
    args = [
        "train",
        "--data",
        f"ts:{ts_file}",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--hidden",
        "8",
        "--threads",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "random")]) == 0
    assert "padded positions per real one here (length-sorted pools" in capsys.readouterr().err  # lengths 3-7
    assert main([*args, "--batching", "bucket", "--out", str(tmp_path / "bucket")]) == 0
    assert "padded positions" not in capsys.readouterr().err
