"""pyproject.toml: the console scripts point at real mains, the dependencies are requirements.txt's pins, and only
the sdm package is shipped. With the package installed (pip install -e .), its metadata and ``python -m`` from
another folder are checked too."""
import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import setuptools

import sdm

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = {"sdm-sample": "sdm.sample:main", "sdm-train": "sdm.train:main", "sdm-evaluate": "sdm.evaluate:main",
           "sdm-convert": "sdm.convert:main"}


def requirements() -> list[str]:
    lines = [l.split("#", 1)[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    return [l for l in lines if l]


def installed() -> importlib.metadata.Distribution | None:
    try:
        dist = importlib.metadata.distribution("sdm-explorer")
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist


def test_project_table():
    p = PYPROJECT["project"]
    assert p["name"] == "sdm-explorer" and p["version"] == sdm.__version__
    assert p["requires-python"] == ">=3.11"
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_targets_import_and_answer_help(script, capsys):
    target = PYPROJECT["project"]["scripts"][script]
    assert target == SCRIPTS[script]
    module, func = target.split(":")
    main = getattr(importlib.import_module(module), func)
    assert callable(main)
    with pytest.raises(SystemExit) as e:                      # argparse's --help exits 0 before any work
        main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out
    assert set(PYPROJECT["project"]["scripts"]) == set(SCRIPTS)


def test_dependencies_are_the_pins_of_requirements_txt():
    assert "dependencies" in PYPROJECT["project"]["dynamic"] and "dependencies" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    reqs = requirements()
    assert reqs and all("==" in r for r in reqs)               # pinned, as requirements.txt promises
    dist = installed()
    if dist is not None:                                      # what pip actually recorded
        assert sorted(dist.requires or []) == sorted(reqs)


def test_only_the_sdm_package_is_shipped():
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "sdm" in packages and all(p == "sdm" or p.startswith("sdm.") for p in packages)


def test_installed_entry_points_and_python_m_from_another_folder(tmp_path):
    dist = installed()
    if dist is None:
        pytest.skip("sdm-explorer is not installed (pip install -e .)")
    assert dist.version == sdm.__version__
    eps = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert eps == SCRIPTS
    r = subprocess.run([sys.executable, "-m", "sdm.sample", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--checkpoint" in r.stdout
