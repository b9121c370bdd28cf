"""Smoke test of the kernel benchmark script (tiny size, short timing, eager 'compile')."""

import csv

import pytest

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


def _fake_rows(n, c, ms_by_method):
    return [
        dict(N=n, C=c, method=m, mode=mode, ms=ms, ms_p20=ms * 0.9, ms_p80=ms * 1.1, peak_mb=1.0)
        for m, ms in ms_by_method.items()
        for mode in bench.MODES
    ]


def test_ratio_table_bandwidth_share_ratios_and_goal_flags():
    # lsdet 1 ms; eager 4 ms, compiled 1.2 ms, CE 0.4 ms.
    rows = _fake_rows(
        1000,
        500,
        {"lsdet": 1.0, "reference eager": 4.0, "reference compiled": 1.2, "F.cross_entropy": 0.4},
    )
    table = bench.ratio_table(rows, element_size=4, peak_gbs=10.0)
    full = next(r for r in table if r["mode"] == "fwd+bwd")
    # fwd+bwd traffic: 1000*500*(4+1) + 1000*4 + 1000*500*4 = 4,504,000 B in 1 ms = 4.504 GB/s.
    assert full["lsdet GB/s"] == pytest.approx(4.504)
    assert full["lsdet % of peak"] == pytest.approx(45.04)
    assert full["eager/lsdet"] == 4.0 and full["lsdet/CE"] == 2.5
    assert full["compiled/lsdet"] == pytest.approx(1.2)
    assert full["lsdet ms p20"] == pytest.approx(0.9)
    assert bench.goal_flags(full) == {
        "eager/lsdet >= 3": True,
        "compiled/lsdet >= 1.5": False,
        "lsdet/CE <= 2": False,
        "lsdet % of peak >= 60": False,
    }
    # Without the card's peak the bandwidth goal is not measured (None), not failed.
    no_peak = bench.ratio_table(rows, element_size=4)[2]
    assert "lsdet % of peak" not in no_peak
    assert bench.goal_flags(no_peak)["lsdet % of peak >= 60"] is None
    fast = dict(full, **{"compiled/lsdet": 1.5, "lsdet/CE": 2.0, "lsdet % of peak": 60.0})
    assert all(bench.goal_flags(fast).values())  # thresholds are inclusive
