"""Table 2: score a trained checkpoint another way at test and evaluate it.

    python experiments/rescore.py CHECKPOINT SCORING OUT_DIR [lsdet.evaluate overrides ...]

A checkpoint trained without concurrent softmax holds an all-zero rates matrix (the trainer
estimates the rates only when the loss or the scoring uses them), and eq. 5 with R = 0 is
plain softmax. For `concurrent_softmax` scoring this script therefore first writes a copy of
the checkpoint (OUT_DIR/checkpoint_with_rates.pt) holding the concurrent rates of the
training data, estimated with the run's own `rates` settings, exactly as the trainer does for
a concurrent-softmax run; then it runs `python -m lsdet.evaluate checkpoint=... scoring=...`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

RATES_KEY = "roi_heads.rates"


def with_training_rates(checkpoint: Path, out: Path) -> tuple[Path, bool]:
    """The checkpoint itself when its rates matrix is non-zero, else a copy at ``out`` with
    the rates of its training data; returns (path, whether the rates were estimated here)."""
    from omegaconf import OmegaConf

    from lsdet.engine.checkpoint import load_checkpoint, save_atomic
    from lsdet.engine.data import concurrent_rates
    from lsdet.evaluation import load_hierarchy

    state = load_checkpoint(checkpoint)
    if RATES_KEY not in state.get("model", {}):
        raise ValueError(f"{checkpoint}: no {RATES_KEY} in the model state (not an lsdet model?)")
    if bool(state["model"][RATES_KEY].abs().sum() > 0):
        return checkpoint, False
    cfg = OmegaConf.create(state["config"])
    hierarchy = load_hierarchy(cfg.data.hierarchy_json, cfg.data.class_descriptions_csv)
    rates = concurrent_rates(cfg.data, cfg.rates, hierarchy)
    expected = tuple(state["model"][RATES_KEY].shape)
    if tuple(rates.shape) != expected:
        raise ValueError(f"{checkpoint}: rates {tuple(rates.shape)} != the model's {expected}")
    state["model"][RATES_KEY] = rates.to(state["model"][RATES_KEY].dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(state, out)
    return out, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/rescore.py", description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("scoring", choices=["softmax", "concurrent_softmax", "sigmoid"])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="overrides of lsdet.evaluate (data.*)")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    if args.scoring == "concurrent_softmax":
        checkpoint, estimated = with_training_rates(
            args.checkpoint, args.out_dir / "checkpoint_with_rates.pt"
        )
        if estimated:
            print(f"{args.checkpoint} had no concurrent rates: estimated them -> {checkpoint}")
    command = [
        sys.executable,
        "-m",
        "lsdet.evaluate",
        f"checkpoint={checkpoint}",
        f"scoring={args.scoring}",
        *args.overrides,
        f"output_dir={args.out_dir}",
        f"hydra.run.dir={args.out_dir}",
    ]
    code = subprocess.run(command).returncode
    copy = args.out_dir / "checkpoint_with_rates.pt"
    if copy.is_file():
        copy.unlink()  # 50 MB; re-made from the training checkpoint when needed
    return code


if __name__ == "__main__":
    raise SystemExit(main())
