"""The command lines the drivers (demo, experiments/run_all.py, GPU check) start runs with."""

from lsdet.apps.launch import evaluate_command, train_command


def test_train_command_runs_lsdet_train_directly_or_under_torchrun():
    assert train_command(["a=1", "b=2"], python="py") == ["py", "-m", "lsdet.train", "a=1", "b=2"]
    command = train_command(["a=1"], python="py", processes=2)
    assert command[:3] == ["py", "-m", "torch.distributed.run"]
    assert command[command.index("--nproc_per_node") + 1] == "2"
    assert command[-3:] == ["-m", "lsdet.train", "a=1"]


def test_evaluate_command_names_the_checkpoint_first():
    command = evaluate_command("runs/x/checkpoints/last.pt", ["device=cpu"], python="py")
    assert command == [
        "py",
        "-m",
        "lsdet.evaluate",
        "checkpoint=runs/x/checkpoints/last.pt",
        "device=cpu",
    ]
