"""Check seqis's CUDA paths against its CPU ones; prints JSON, exits 1 if a check fails.

The test suite runs on CPU (CI has no GPU); this script is what a machine with one runs:

    python benchmarks/cuda_check.py [--device cuda] [--out runs/cuda-check]

- factors: the closed-form FIM factors on the device equal the CPU's, and equal the norms
  that ``OutputLayerNorms`` reads off a real backward pass on the device (LM with padding,
  and classification);
- training: ``seqis train`` on the device with every sampler (importance sampling forced on,
  refresh running), padded and packed, ends with finite losses;
- resume: N steps straight and N/2 + N/2 resumed end at the same validation loss (cuDNN's RNN
  kernels are not bit-deterministic, so within a tolerance, reported);
- own loop: ``ImportanceLoader`` with a model on the device and refresh through
  ``output_layer_scorer`` trains and keeps its factors finite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import seqis
from seqis.importance.factors import fim_factors
from seqis.training.trainer import TrainConfig, train


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def check_factors(spec: str, device: torch.device) -> dict:
    """FIM factors on CPU and device, and hook norms from a backward on the device."""
    data = seqis.load_data(spec)
    torch.manual_seed(0)
    model = seqis.RecurrentModel(
        data.task, data.input_size, data.num_outputs, seqis.ModelConfig("gru", 64, 1), tokens=data.tokens
    )
    batch = data.batch(data.train_idx[:48])
    with torch.no_grad():
        out_cpu = model(batch)
    cpu = fim_factors(out_cpu.logits, out_cpu.hidden, out_cpu.targets, out_cpu.mask)
    model.to(device)
    batch = batch.to(device)
    norms = seqis.OutputLayerNorms(model.head)
    out = model(batch)
    on_device = fim_factors(out.logits, out.hidden, out.targets, out.mask)
    out.loss.mean().backward()
    hooked = norms.compute()
    norms.remove()
    return {
        "data": spec,
        "device_vs_cpu": _relative_error(on_device, cpu),
        "hooks_vs_closed_form": _relative_error(hooked, on_device),
        "ok": _relative_error(on_device, cpu) < 1e-3 and _relative_error(hooked, on_device) < 1e-3,
    }


def check_training(out: Path, device: str) -> list[dict]:
    """Every sampler trains on the device; padded and packed variable-length sequences."""
    results = []
    runs = [(s, False) for s in ("uniform", "fim", "gradnorm", "loss", "exact", "prune")]
    runs += [("fim", True)]  # packed, cost-aware
    for sampler, pack in runs:
        config = TrainConfig(
            data="stdlib:lines",
            model=seqis.ModelConfig("lstm", 64, 1, pack=pack),
            mining=seqis.MiningConfig(
                sampler=sampler, always_on=sampler != "uniform", warmup_steps=20, cost_aware=pack
            ),
            steps=120,
            batch_size=32,
            eval_every=60,
            train_eval_size=256,
            device=device,
            out=str(out / f"{sampler}{'-packed' if pack else ''}"),
            progress=False,
            tensorboard=False,
        )
        config.data_options.val_size = 512
        start = time.perf_counter()
        summary = train(config)
        losses = [summary["final_val_loss"], summary["final_train_eval_loss"]]
        on_device = summary["device"].startswith(device.split(":")[0])
        results.append(
            {
                "sampler": sampler,
                "packed": pack,
                "device": summary["device"],
                "final_val_loss": summary["final_val_loss"],
                "is_active_share": summary["is_active_share"],
                "mining_share": summary["mining_share"],
                "seconds": round(time.perf_counter() - start, 1),
                "ok": all(math.isfinite(x) for x in losses) and on_device,
            }
        )
    return results


def check_resume(out: Path, device: str) -> dict:
    """80 steps straight against 40 + 40 resumed, fim with refresh on, on the device."""

    def config(name: str, steps: int) -> TrainConfig:
        c = TrainConfig(
            data="digits",
            model=seqis.ModelConfig("gru", 64, 1),
            mining=seqis.MiningConfig(sampler="fim"),
            steps=steps,
            batch_size=32,
            eval_every=40,
            checkpoint_every=40,
            device=device,
            out=str(out / name),
            progress=False,
            tensorboard=False,
        )
        c.mining.always_on, c.mining.warmup_steps = True, 10
        return c

    straight = train(config("straight", 80))["final_val_loss"]
    train(config("resumed", 40))
    resumed = train(config("resumed", 80), resume=True)["final_val_loss"]
    gap = abs(straight - resumed) / abs(straight)
    return {"straight": straight, "resumed": resumed, "relative_gap": gap, "ok": gap < 1e-2}


def check_own_loop(device: torch.device) -> dict:
    """ImportanceLoader with the model on the device, refresh through output_layer_scorer."""
    torch.manual_seed(0)
    n, steps, features, classes = 2048, 200, 8, 5
    x = torch.randn(n, 12, features)
    y = (x[:, :, 0].sum(1) > 0).long() + 2 * (x[:, -1, 1] > 1).long()
    rnn, head = nn.GRU(features, 32, batch_first=True).to(device), nn.Linear(32, classes).to(device)
    model = nn.ModuleDict({"rnn": rnn, "head": head})

    def per_sequence_loss(_model, batch):
        inputs, targets = (t.to(device) for t in batch)
        states, _ = rnn(inputs)
        return F.cross_entropy(head(states[:, -1]), targets, reduction="none", label_smoothing=0.1)

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    config = seqis.MiningConfig(always_on=True, warmup_steps=20)
    loader = seqis.ImportanceLoader(loader, head, config, loss_fn=per_sequence_loss, model=model)
    step, first, last = 0, None, None
    while step < steps:
        for batch in loader:
            loss = loader.weigh(per_sequence_loss(model, batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loader.step()
            last, step = loss.item(), step + 1
            first = last if first is None else first
            if step >= steps:
                break
    factors = torch.as_tensor(loader.sampler.factors)
    scored = factors[~factors.isnan()]  # NaN: not scored yet
    finite = bool(scored.numel() > 0 and torch.isfinite(scored).all())
    return {
        "first_loss": first,
        "last_loss": last,
        "active_share": loader.miner.active_steps / max(1, loader.miner.steps),
        "factor_coverage": loader.sampler.coverage,
        "factors_finite": finite,
        "ok": finite and last < first,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="runs/cuda-check")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_check: CUDA is not available here", file=sys.stderr)
        return 2
    device, out = torch.device(args.device), Path(args.out)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    checks = {
        "factors": lambda: [check_factors(spec, device) for spec in ("stdlib:lines", "digits")],
        "training": lambda: check_training(out, args.device),
        "resume": lambda: check_resume(out, args.device),
        "own_loop": lambda: check_own_loop(device),
    }
    failed = []
    for name, check in checks.items():
        try:
            report[name] = check()
        except Exception as e:  # report every check, even after one breaks
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        entries = report[name] if isinstance(report[name], list) else [report[name]]
        if not all(entry["ok"] for entry in entries):
            failed.append(name)
    report["failed"] = failed
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
