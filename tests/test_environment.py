"""requirements.txt (pip) and environment.yml (conda) must describe the same tested set."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def conda_pins() -> tuple[dict[str, str], list]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = dict(entry.lower().split("==") for entry in pip_section if "==" in entry)
    return pins, env["dependencies"]


def test_every_requirement_is_pinned_exactly():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert line.count("==") == 1, f"requirements.txt: {line!r} is not an exact pin"


def test_environment_yml_pins_the_same_packages_and_versions():
    pins, _ = conda_pins()
    assert pins == pip_pins()


def test_environment_yml_uses_python_311_and_installs_the_package():
    _, deps = conda_pins()
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e ." in pip_section


def test_installed_versions_match_the_pins():
    from importlib.metadata import PackageNotFoundError, version

    wrong = {}
    for name, pinned in pip_pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            wrong[name] = "missing"
            continue
        if got.split("+")[0] != pinned:
            wrong[name] = got
    assert not wrong, f"installed versions differ from requirements.txt: {wrong}"
