"""Importance sampling inside your own PyTorch loop: the lines that change are marked (*).

Your data stays a Dataset, your model stays yours, your loop stays yours. seqis asks for
per-sequence losses (``reduction="none"``) and hooks your output layer, from whose inputs
and output gradients it mines the importance factors during your own backward pass.

Run: python examples/own_loop.py [--steps 300]
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import seqis


class Windows(Dataset):
    """A plain dataset of (input, target) character windows, as a user would have."""

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]


class CharLSTM(nn.Module):
    def __init__(self, vocab, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        hidden, _ = self.lstm(self.embed(x))
        return self.head(hidden)


def main(steps: int = 300, always_on: bool = False) -> dict:
    torch.manual_seed(0)
    data = seqis.load_data("stdlib", seqis.DataOptions(seq_len=64, max_chars=300_000))
    train_set = Windows(data.inputs[data.train_idx], data.targets[data.train_idx])
    model = CharLSTM(len(data.vocab))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    sampler = seqis.ImportanceSampler(range(len(train_set)), batch_size=32, smoothing=0.2, seed=0)  # (*)
    loader = DataLoader(  # (*) your collate_fn goes inside weighted_collate
        seqis.WeightedDataset(train_set), batch_sampler=sampler, collate_fn=seqis.weighted_collate()
    )
    norms = seqis.OutputLayerNorms(model.head)  # (*) hooks on your output layer
    miner = seqis.Miner(sampler, seqis.MiningConfig(always_on=always_on))  # (*) the switch

    step = 0
    while step < steps:
        for (x, y), index, weight in loader:
            logits = model(x)
            per_seq = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
            loss = (weight * per_seq).mean()  # (*) weight each sequence's loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            miner.harvest(index, norms.compute(weight), step, weight)  # (*) factors from this backward
            miner.after_step(step)  # (*) switches importance sampling on or off every 50 steps
            step += 1
            if step % 100 == 0:
                state = "on" if sampler.active else "off"
                print(f"step {step}: weighted train loss {loss.item():.3f}, importance sampling {state}")
            if step >= steps:
                break
    with torch.no_grad():
        val_x, val_y = data.inputs[data.val_idx], data.targets[data.val_idx]
        val = F.cross_entropy(model(val_x).transpose(1, 2), val_y).item()
    print(f"validation loss after {steps} steps: {val:.3f}")
    return {"val_loss": val, "uniform_loss": math.log(len(data.vocab)), "is_active": sampler.active}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--always-on", action="store_true", help="importance sampling from step 50")
    args = parser.parse_args()
    main(args.steps, args.always_on)
