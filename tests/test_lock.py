"""The install is reproducible: every dependency pyproject.toml names is pinned in requirements.lock,
inside its range, and the environment the tests run in has exactly the locked versions."""

import importlib.metadata as md
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import ROOT


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *(r for extra in extras.values() for r in extra)]]


def test_every_declared_dependency_is_pinned_inside_its_range():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "pip":
            continue  # the installer itself: pip freeze leaves it out
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside pyproject.toml's {requirement}")


def test_the_environment_has_the_locked_versions():
    """What `make` installs (the package and its test extra) is there, each package at its pin; the
    docs extra (make docs-images) may be missing."""
    pins = locked()
    wrong = {}
    for name, version in pins.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue
        if re.sub(r"[-_.]+", "-", installed) != re.sub(r"[-_.]+", "-", version):
            wrong[name] = (version, installed)
    assert not wrong, f"locked vs installed: {wrong} (make installs from requirements.lock)"
    missing = [r.name for r in declared_for_make() if not _installed(r.name)]
    assert not missing, f"not installed: {missing}"


def declared_for_make() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def _installed(name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True
