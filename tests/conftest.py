import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    lines = [f"line {i} says {'ab' * (i % 7)} and more words here" for i in range(200)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TS_HEADER = (
    "@problemName Toy\n@timeStamps false\n@univariate false\n@dimensions 2\n"
    "@equalLength false\n@classLabel true a b\n@data\n"
)


@pytest.fixture
def ts_file(tmp_path):
    path = tmp_path / "toy.ts"
    rows = []
    for i in range(30):
        n = 3 + i % 5
        ch1 = ",".join(str(0.1 * (i + t)) for t in range(n))
        ch2 = ",".join(str(-0.2 * t) for t in range(n))
        rows.append(f"{ch1}:{ch2}:{'a' if i % 2 else 'b'}")
    path.write_text(TS_HEADER + "\n".join(rows) + "\n")
    return path


def run_cli(*args: str, timeout: float = 180):
    """``python -m seqis.cli ARGS`` in a subprocess, as a user would run it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "seqis.cli", *args], capture_output=True, text=True, timeout=timeout
    )
