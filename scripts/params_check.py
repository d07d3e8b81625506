"""Does a change move any number? One 300-step digits run per scheme, its final parameters' hash.

A refactor must leave every ``params_sha256`` as it was; a fix that changes one says which and
why. Run it before and after a change on the same machine and compare the two JSON files:

    python scripts/params_check.py > before.json      # on the old code
    python scripts/params_check.py --compare before.json

Each run trains the same small GRU on scikit-learn's digits (embedded data, ~2 s a run on
one thread) under warm-up + cosine decay, so the lr rule, the switch, the horizon and the
schedule all take part.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

BASE = (
    "--data digits --model gru --hidden 32 --layers 1 --batch-size 32 --lr 0.01 --schedule cosine "
    "--warmup 0.05 --eval-every 100 --checkpoint-every 1000 --threads 1 --no-progress"
)
# name -> extra flags; each exercises one scheme or one path of the miner.
CASES = {
    "uniform": "--sampler uniform --steps 300",
    "fim": "--sampler fim --steps 300",
    "fim-constant": "--sampler fim --steps 300 --schedule constant --warmup 0",
    "fim-always-on": "--sampler fim --always-on --steps 300",
    "fim-epochs": "--sampler fim --always-on --epochs 5",
    "fim-anneal": "--sampler fim --always-on --anneal 0.3 --steps 300",
    "fim-sqrt": "--sampler fim --always-on --lr-scale sqrt --steps 300",
    "loss": "--sampler loss --always-on --steps 300",
    "gradnorm": "--sampler gradnorm --always-on --steps 300",
    "presample": "--sampler presample --steps 300",
    "presample-on": "--sampler presample --always-on --steps 300",
    "cost-aware": "--sampler fim --always-on --pack --cost-aware --steps 300",
    "prune": "--sampler prune --steps 300",
    "prune-epochs": "--sampler prune --epochs 10",
    "subset": "--sampler subset --steps 300",
    "fim-watch": "--sampler fim --always-on --schedule constant --warmup 0 --val-patience 1 --eval-every 20 "
    "--steps 300",
}


def run_all(only: list[str] | None) -> dict:
    from seqis.cli import build_parser, train_config
    from seqis.training.trainer import train

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in CASES.items():
            if only and name not in only:
                continue
            argv = ["train", *BASE.split(), *extra.split(), "--out", str(Path(tmp) / name)]
            summary = train(train_config(build_parser().parse_args(argv)))
            results[name] = {
                "params_sha256": summary["params_sha256"],
                "steps": summary["steps"],
                "is_active_share": round(summary["is_active_share"], 4),
                "final_val_loss": summary["final_val_loss"],
            }
            print(f"{name}: {results[name]}", file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="a JSON file from an earlier run: report what moved")
    parser.add_argument("--only", action="append", choices=list(CASES))
    args = parser.parse_args()
    results = run_all(args.only)
    print(json.dumps(results, indent=2))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    moved = [n for n in results if before.get(n, {}).get("params_sha256") != results[n]["params_sha256"]]
    for name in moved:
        print(f"MOVED {name}: {before.get(name)} -> {results[name]}", file=sys.stderr)
    print(f"{len(results) - len(moved)} of {len(results)} unchanged", file=sys.stderr)
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
