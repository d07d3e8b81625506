"""Regenerate every committed results report: ``make results``.

Each experiment is one ``seqis compare`` race written to ``docs/results/NAME/``; the
summary table in ``docs/results/README.md`` and in the top-level README (between the
``results:begin``/``results:end`` markers) is rebuilt from their ``summary.json`` files.

    python -m seqis.experiments.results                 # run all races, then summarise
    python -m seqis.experiments.results --only digits   # one race
    python -m seqis.experiments.results --summarize     # reports and tables from existing runs
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
from pathlib import Path

from seqis.cli import main as seqis_main
from seqis.experiments.compare import write_report

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "results"
COMMON = "--samplers uniform,fim,gradnorm,loss --seeds 3 --threads 1".split()
SMALL_LM = "--hidden 128 --layers 1 --batch-size 32 --eval-every 25 --time-budget 30"
SMALL_CLS = "--hidden 64 --layers 1 --eval-every"
EXPERIMENTS: dict[str, list[str]] = {
    name: args.split()
    for name, args in {
        "stdlib": f"--data stdlib {SMALL_LM}",
        "shakespeare": f"--data shakespeare {SMALL_LM}",
        "shakespeare-lines": f"--data shakespeare:lines {SMALL_LM}",
        # JapaneseVowels overfits within seconds: a short budget keeps the race where it is decided.
        "japanese-vowels": f"--data ucr:JapaneseVowels {SMALL_CLS} 10 --batch-size 16 --time-budget 6",
        "digits": f"--data digits {SMALL_CLS} 25 --batch-size 32 --time-budget 30",
    }.items()
}


def run(name: str) -> None:
    out = RESULTS / name
    if out.exists():
        shutil.rmtree(out)
    args = ["compare", *EXPERIMENTS[name], *COMMON, "--out", str(out)]
    if seqis_main(args) != 0:
        raise SystemExit(f"experiment {name} failed")
    # Per-run folders hold checkpoints and TensorBoard logs: keep only what the report cites.
    for run_dir in (out / "runs").iterdir():
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def summarize(link_prefix: str = "") -> str:
    header = (
        "| experiment | ceiling (fim) | fim time @30% | fim time @60% | fim time @90% "
        "| fim steps @90% | gradnorm time @90% | loss time @90% | fim IS active | fim mining |"
    )
    rows = [header, "|---" * 10 + "|"]
    for name in EXPERIMENTS:
        path = RESULTS / name / "summary.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        targets = [str(t) for t in result["targets"]]
        last = targets[-1]
        fim_runs = [r for r in result["runs"] if r["sampler"] == "fim"]
        ceil = [r["factor_ceiling"] for r in fim_runs if r["factor_ceiling"]]
        cells = [
            f"{statistics.median(ceil):.2f}" if ceil else "–",
            *(_cell(result["speedup"].get("fim", {}).get(t)) for t in targets),
            _cell(result["step_speedup"].get("fim", {}).get(last)),
            _cell(result["speedup"].get("gradnorm", {}).get(last)),
            _cell(result["speedup"].get("loss", {}).get(last)),
            f"{statistics.median(r['is_active_share'] for r in fim_runs):.0%}" if fim_runs else "–",
            f"{statistics.median(r['mining_share'] for r in fim_runs):.1%}" if fim_runs else "–",
        ]
        rows.append(f"| [{name}]({link_prefix}{name}/report.md) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(stat: dict | None) -> str:
    if not stat or stat["median"] is None:
        return "n/a"
    text = f"{stat['median']:.2f} ({stat['min']:.2f}–{stat['max']:.2f})"
    return text + ("*" if stat["censored"] else "")


def write_tables() -> None:
    table = summarize()
    note = (
        "Speedup = uniform's wall-clock time to a target validation loss / the sampler's, median "
        "(min–max) over 3 seeds, paired by seed; above 1 is faster. Targets are the losses uniform "
        "reaches at 30/60/90% of its budget. 'fim steps' is the same ratio in training steps (the "
        "algorithmic effect without per-step cost or timing noise). * = a run missed the target "
        "within its budget; its whole run time was used, so the ratio is a bound. Regenerate with "
        "`make results` (or `python -m seqis.experiments.results --summarize` from existing runs)."
    )
    (RESULTS / "README.md").write_text(f"# Results\n\n{note}\n\n{table}\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"<!-- results:begin -->\n{note}\n\n{summarize('docs/results/')}\n<!-- results:end -->"
    text = re.sub(r"<!-- results:begin -->.*<!-- results:end -->", lambda _: block, text, flags=re.S)
    readme.write_text(text)


def rebuild_reports() -> None:
    """Rewrite each race's report, plots and summary from its run folders (no training)."""
    for name in EXPERIMENTS:
        if (RESULTS / name / "race.json").exists():
            write_report(RESULTS / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(EXPERIMENTS))
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="rebuild reports and tables from existing runs, without training",
    )
    args = parser.parse_args()
    if args.summarize:
        rebuild_reports()
    else:
        for name in args.only or EXPERIMENTS:
            run(name)
    write_tables()


if __name__ == "__main__":
    main()
