"""dev/mutation_sample.py: the seeded sample behind the mutation score (a fresh sample must not reuse old mutants)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "dev" / "mutation_sample.py"


@pytest.fixture
def mutation_sample(monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = {"mixin": [f"mixin__mutmut_{i}" for i in range(200)], "replay": [f"replay__mutmut_{i}" for i in range(100)]}
    monkeypatch.setattr(module, "mutant_names", lambda name: sorted(fake[name]))
    return module


def test_same_seed_same_sample(mutation_sample):
    first = mutation_sample.sample(["mixin", "replay"], 30, seed=0)
    assert first == mutation_sample.sample(["mixin", "replay"], 30, seed=0)
    assert [len(names) for names in first.values()] == [30, 30]
    assert all(len(set(names)) == 30 for names in first.values())


def test_excluded_samples_are_left_out(mutation_sample):
    earlier = mutation_sample.sample(["mixin", "replay"], 30, seed=0)
    also = mutation_sample.sample(["mixin", "replay"], 15, seed=1)
    fresh = mutation_sample.sample(["mixin", "replay"], 30, seed=2, exclude=[(0, 30), (1, 15)])
    for module in ("mixin", "replay"):
        assert len(fresh[module]) == 30
        assert not set(fresh[module]) & (set(earlier[module]) | set(also[module]))
    # Without the exclusion, seed 2 reuses some of them on a module this small (100 mutants, 45 taken).
    plain = mutation_sample.sample(["replay"], 30, seed=2)
    assert set(plain["replay"]) & (set(earlier["replay"]) | set(also["replay"]))


def test_exclude_argument_is_read_or_refused(mutation_sample):
    assert mutation_sample.seed_and_size("1:15") == (1, 15)
    with pytest.raises(Exception, match="SEED:PER_MODULE"):
        mutation_sample.seed_and_size("1")


def test_wilson_interval_of_the_reported_fresh_sample(mutation_sample):
    # 24 of 27 (stop 23's fresh sample) is reported as 72-96%.
    low, high = mutation_sample.wilson_interval(24, 27)
    assert low == pytest.approx(0.7195, abs=1e-3)
    assert high == pytest.approx(0.9614, abs=1e-3)
    assert mutation_sample.wilson_interval(0, 0) == (0.0, 1.0)
