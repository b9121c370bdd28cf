"""The package list of pyproject.toml names every package of src/lsdet (a wheel holds only
the packages listed; the editable install would hide a missing one)."""

from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_src_is_listed_in_pyproject():
    config = read_configuration(REPO_ROOT / "pyproject.toml")["tool"]["setuptools"]
    src = REPO_ROOT / "src"
    found = {".".join(init.parent.relative_to(src).parts) for init in src.rglob("__init__.py")} | {
        "lsdet.kernels"
    }
    assert set(config["packages"]) == found
    assert (REPO_ROOT / config["package-dir"]["lsdet.kernels"] / "__init__.py").is_file()
