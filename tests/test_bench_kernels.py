"""Smoke test of the kernel benchmark script (tiny size, short timing, eager 'compile')."""

import csv

import lsdet.bench.kernels as bench


def test_benchmark_runs_and_writes_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "CPU_ROUNDS", 1)
    monkeypatch.setattr(bench, "CPU_ROUND_SECONDS", 0.01)
    bench.main(
        ["--sizes", "64x7", "--device", "cpu", "--compile-backend", "eager", "--out", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert "lsdet/CE" in printed and "fwd+bwd" in printed
    with open(tmp_path / "ratios.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["mode"] for row in table] == ["fwd", "bwd", "fwd+bwd"]
    for row in table:
        assert float(row["lsdet ms"]) > 0 and float(row["lsdet/CE"]) > 0
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(bench.METHODS) * len(bench.MODES)
    assert (tmp_path / "fwd_bwd.png").stat().st_size > 0


def test_problem_is_a_valid_multilabel_batch():
    logits, targets, labels, rates, weights = bench.make_problem(
        200, 11, "cpu", bench.torch.float32
    )
    assert targets.sum(dim=1).min() >= 1
    assert targets[bench.torch.arange(200), labels].all()
    assert (rates[0] == 0).all() and (rates[:, 0] == 0).all()
    assert ((rates >= 0) & (rates <= 1)).all() and weights.shape == (11,)


def test_useful_bytes_by_hand():
    # fwd: 2x3 fp32 logits + 2x3 uint8 targets + 2 fp32 losses; bwd: 2x3 fp32 gradients.
    assert bench.useful_bytes(2, 3, "fwd", 4) == 24 + 6 + 8
    assert bench.useful_bytes(2, 3, "bwd", 2) == 12
    assert bench.useful_bytes(2, 3, "fwd+bwd", 4) == 38 + 24
