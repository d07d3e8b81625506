"""One place to add a scheme or a factor; layers that import downward only; functions one screen long."""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import seqis
from seqis.cli import build_parser
from seqis.errors import ConfigError
from seqis.importance.config import MiningConfig
from seqis.importance.factors import FACTORS, Factor, gradnorm_factors, register_factor
from seqis.importance.schemes import SCHEMES, Scheme, register_scheme
from seqis.plan import Plan
from seqis.sampling.sampler import ImportanceSampler
from seqis.training.wiring import sampling_for
from tests.test_own_loop import LastStep, pad_collate, variable_length_items

SRC = Path(__file__).resolve().parents[1] / "src" / "seqis"
# Lower layers first; a module may import its own layer and those below it.
LAYERS = [
    {"errors", "options", "plan"},
    {"data", "distributed"},
    {"models"},
    {"sampling"},
    {"importance"},
    {"training"},
    {"experiments", "lightning"},
    {"cli"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _seqis_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {name for name in found if name.startswith("seqis.")}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        if path.name != "__init__.py" or path.parent != SRC:  # seqis/__init__ loads names lazily
            yield path, "seqis." + ".".join(path.relative_to(SRC).with_suffix("").parts)


def test_every_layer_imports_only_its_own_and_lower_ones():
    for path, module in _modules():
        for imported in _seqis_imports(path):
            assert _layer(imported) <= _layer(module), f"{module} imports {imported}"


def test_the_analysis_is_pure_and_lightning_uses_public_apis_only():
    analysis = _seqis_imports(SRC / "experiments" / "analysis.py")
    assert not analysis & {"seqis.training.trainer", "seqis.importance.switch"}
    lightning = (SRC / "lightning.py").read_text()
    assert "_data_source" not in lightning and "._trainer" not in lightning


def test_no_scheme_is_tested_by_name_outside_the_registry():
    pattern = re.compile(r"sampler (==|!=) \"|sampler (not )?in \(")
    for path, module in _modules():
        if module != "seqis.importance.schemes":
            assert not pattern.search(path.read_text()), module


def test_no_function_is_longer_than_a_screen():
    for path, module in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{module}.{node.name}"


# -- a scheme added through the registry ------------------------------------------------------
@pytest.fixture
def steady():
    """A scheme defined outside seqis: importance draws with no switch, at least half uniform."""

    @register_scheme
    class Steady(Scheme):
        name, help = "steady", "importance draws, always on, at least half uniform"
        sampler_class = ImportanceSampler
        shorthands = {"steady-loss": "loss"}

        def check(self, config):
            if config.cost_aware:
                raise ConfigError("steady draws ignore costs")

        def build_sampler(self, config, indices, batch_size, seed, plan, lengths):
            return ImportanceSampler(indices, batch_size, max(config.smoothing, 0.5), seed=seed)

    yield Steady
    del SCHEMES["steady"]


def test_a_scheme_registered_outside_seqis_trains_end_to_end(steady):
    config = MiningConfig(sampler="steady-loss", warmup_steps=10, check_every=10)
    assert (config.sampler, config.factor, config.label) == ("steady", "loss", "steady-loss")
    assert MiningConfig(sampler="steady").label == "steady:fim" and not config.has_switch
    with pytest.raises(ConfigError, match="ignore costs"):
        MiningConfig(sampler="steady", cost_aware=True)
    sampler, miner = sampling_for(config, torch.arange(100), 10, plan=Plan(100, 10, steps=30))
    for step in range(30):
        index, weights = sampler.draw()
        miner.harvest(index, torch.rand(10) + 0.1, step, weights)
        miner.after_step(step)
    assert sampler.active and sampler.smoothing == 0.5 and miner.switch.watch.patience == 0
    train_help = "".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "steady-loss(steadywiththelossfactor)" in train_help  # --sampler's choices and help


def test_registered_names_do_not_clash():
    with pytest.raises(ValueError, match="registered already"):

        @register_scheme
        class Again(Scheme):
            name, help = "fim", "a second fim"


# -- factors ------------------------------------------------------------------------------------
@pytest.fixture
def flat_factor():
    factor = register_factor(
        Factor(
            "flat",
            "every sequence alike",
            harvest=lambda model, batch, out, k: torch.ones(k),
            score=lambda model, batch: torch.ones(len(batch.index)),
        )
    )
    yield factor
    del FACTORS["flat"]


def test_a_factor_registered_outside_seqis_is_a_choice_everywhere(flat_factor, tmp_path):
    assert MiningConfig(factor="flat").label == "importance:flat"
    factor_help = MiningConfig.__dataclass_fields__["factor"].metadata["help"]()
    assert "flat: every sequence alike" in factor_help
    args = ["train", "--data", "digits:rows", "--factor", "flat", "--steps", "5", "--hidden", "8"]
    args += ["--layers", "1", "--no-progress", "--threads", "1", "--out", str(tmp_path)]
    assert seqis.cli.main(args) == 0
    refused = r"ImportanceLoader reads factors off your output layer's hooks \(fim, gradnorm, for any loss\)"
    with pytest.raises(ConfigError, match=refused):
        loader = DataLoader(range(8), batch_size=2)
        seqis.ImportanceLoader(loader, torch.nn.Linear(2, 2), MiningConfig(factor="flat"))


def test_the_own_loop_harvests_every_factor_its_hooks_can_produce():
    """gradnorm from the hooks equals the trainer's formula on the same forward pass."""
    torch.manual_seed(0)
    model = LastStep()
    loader = seqis.ImportanceLoader(
        DataLoader(variable_length_items(), batch_size=16, collate_fn=pad_collate),
        model.head,
        MiningConfig(factor="gradnorm", always_on=True, warmup_steps=2, check_every=2),
    )
    batch = next(iter(loader))
    logits = model(batch[0], batch[1])
    loader.weigh(torch.nn.functional.cross_entropy(logits, batch[2], reduction="none")).backward()
    hooked = loader.norms.compute(loader.weight)

    @dataclass
    class Output:  # what the trainer's formula reads of a forward pass: one target step a sequence
        logits: torch.Tensor
        targets: torch.Tensor
        mask: torch.Tensor

    one_step = Output(logits.unsqueeze(1), batch[2].unsqueeze(1), torch.ones(16, 1, dtype=torch.bool))
    assert torch.allclose(hooked, gradnorm_factors(one_step), rtol=1e-5)
    loader.step()
    loader.miner.flush()
    assert loader.miner.sampler.coverage > 0  # recorded
