"""What `seqis.ImportanceLoader` costs a user's own loop, per step, against the plain loop. Prints JSON.

The same model, data, optimizer and batch size, three ways: the plain DataLoader loop; the
wrapped loop with the switch deciding; the wrapped loop with importance sampling forced on
(hooks, full harvest, tree updates, and forward-only refresh through `loss_fn`). Modes
alternate in short rounds so that machine noise hits them alike; ratios are taken per round.

Run: python benchmarks/own_loop_bench.py [--data fashion-mnist] [--steps 300 --rounds 3]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import seqis


class GRUClassifier(nn.Module):
    def __init__(self, features, classes, hidden):
        super().__init__()
        self.rnn = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def per_sequence_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def steps_per_s(mode: str, dataset, classes: int, args) -> float:
    torch.manual_seed(0)
    model = GRUClassifier(dataset.tensors[0].shape[-1], classes, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    if mode != "plain":
        config = seqis.MiningConfig(always_on=mode == "always_on")
        loader = seqis.ImportanceLoader(loader, model.head, config, loss_fn=per_sequence_loss, model=model)
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for batch in loader:
            losses = per_sequence_loss(model, batch)
            loss = losses.mean() if mode == "plain" else loader.weigh(losses)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if mode != "plain":
                loader.step()
            step += 1
            if step >= args.steps:
                break
    return step / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = seqis.load_data(args.data)
    index = data.train_idx
    dataset = TensorDataset(data.inputs[index].float(), data.targets[index])
    modes = ["plain", "switch", "always_on"]
    speeds = {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode in modes[r % 3 :] + modes[: r % 3]:  # rotated order
            speeds[mode].append(steps_per_s(mode, dataset, data.num_outputs, args))
    overhead = {
        mode: statistics.median(p / s - 1 for p, s in zip(speeds["plain"], speeds[mode], strict=True))
        for mode in modes[1:]
    }
    print(
        json.dumps(
            {
                "data": args.data,
                "sequences": len(index),
                "steps": args.steps,
                "rounds": args.rounds,
                "threads": args.threads,
                "steps_per_s": {m: [round(v, 2) for v in s] for m, s in speeds.items()},
                "overhead_per_step": {m: round(v, 4) for m, v in overhead.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
