"""Importance sampling inside your own PyTorch loop: the lines that change are marked (*).

A plain loop over variable-length sequences (the JapaneseVowels recordings, 7 to 29 steps
of 12 features) with a custom padding collate_fn and a label-smoothed loss. seqis wraps
the DataLoader, draws the sequences whose gradients matter most, and reads the importance
factors from hooks on the output layer during the backward pass the loop already runs.

Run: python examples/own_loop.py [--steps 300] [--label-smoothing 0.1]
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

import seqis  # (*)


class Recordings(Dataset):
    """Variable-length sequences as a user would have them: a list of (T_i, C) tensors."""

    def __init__(self, sequences, labels):
        self.sequences, self.labels = sequences, labels

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        return self.sequences[i], self.labels[i]


def pad_collate(items):
    """Pads a batch to its longest sequence; the model reads each one's last real step."""
    sequences, labels = zip(*items, strict=True)
    lengths = torch.tensor([len(s) for s in sequences])
    return pad_sequence(list(sequences), batch_first=True), lengths, torch.stack(list(labels))


class GRUClassifier(nn.Module):
    def __init__(self, features, classes, hidden=64, embed=32):
        super().__init__()
        self.encoder = nn.Linear(features, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, lengths):
        states, _ = self.rnn(self.encoder(x))
        return self.head(states[torch.arange(len(x)), lengths - 1])


def recordings(data, index):
    return Recordings([data.inputs[i, : data.lengths[i]] for i in index], [data.targets[i] for i in index])


def main(
    steps: int = 300,
    label_smoothing: float = 0.1,
    always_on: bool = False,
    seed: int = 0,
    accumulate: int = 1,
) -> dict:
    data = seqis.load_data("ucr:JapaneseVowels")  # any map-style Dataset works; this one is embedded
    train_set, val_set = recordings(data, data.train_idx.tolist()), recordings(data, data.val_idx.tolist())
    torch.manual_seed(seed)
    model = GRUClassifier(data.input_size, data.num_outputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def per_sequence_loss(model, batch):
        x, lengths, y = batch
        return F.cross_entropy(model(x, lengths), y, reduction="none", label_smoothing=label_smoothing)

    loader = DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=pad_collate)
    # Optional: with the loss function, seqis also refreshes stale factors by forward-only passes.
    refresh = {"loss_fn": per_sequence_loss, "model": model, "lengths": data.lengths[data.train_idx]}
    loader = seqis.ImportanceLoader(
        loader, model.head, seqis.MiningConfig(always_on=always_on), **refresh
    )  # (*)

    step, micro = 0, 0
    while step < steps:
        for batch in loader:
            loss = loader.weigh(per_sequence_loss(model, batch)) / accumulate  # (*) was: .mean()
            loss.backward()
            micro += 1
            if micro % accumulate == 0:  # under gradient accumulation: every k-th micro-batch
                optimizer.step()
                optimizer.zero_grad()
            loader.step()  # (*) after every backward (and the update): factors; refresh; the switch
            if micro % accumulate:
                continue
            step += 1
            if step % 100 == 0:
                state = "on" if loader.active else "off"
                print(f"step {step}: weighted train loss {loss.item():.3f}, importance sampling {state}")
            if step >= steps:
                break
    model.eval()
    with torch.no_grad():
        x, lengths, y = pad_collate([val_set[i] for i in range(len(val_set))])
        val = F.cross_entropy(model(x, lengths), y).item()
    print(f"validation loss after {steps} steps: {val:.4f}")
    active_share = loader.miner.active_steps / max(1, loader.miner.steps)
    chance = float(torch.log(torch.tensor(9.0)))
    return {"val_loss": val, "active_share": active_share, "chance_loss": chance, "recorded": loader.steps}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--always-on", action="store_true", help="importance sampling from step 50")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    args = parser.parse_args()
    main(args.steps, args.label_smoothing, args.always_on, accumulate=args.accumulate)
