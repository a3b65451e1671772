"""Artifact formats: t2iroute has no release yet, so it reads only the current format (3). An
artifact written before (tests/data/v1-ridge-router, format 1) is refused, saying which versions
this t2iroute reads; the pre-release migrations are gone (CHANGELOG.md)."""

import json
import shutil
from pathlib import Path

import pytest

from t2iroute import Router
from t2iroute.errors import ArtifactError
from t2iroute.router.artifact import FORMAT_VERSION, READABLE_VERSIONS

DATA = Path(__file__).parent / "data"


def test_only_the_current_format_is_read():
    assert READABLE_VERSIONS == (FORMAT_VERSION,) == (3,)


@pytest.mark.parametrize("version", [1, 2, 4, 99])
def test_other_format_versions_are_refused_naming_the_versions_read(tmp_path, version):
    path = tmp_path / "r"
    shutil.copytree(DATA / "v1-ridge-router", path)
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = version
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=rf"format version {version} but this t2iroute reads versions \[3\]"):
        Router.load(path)


def test_a_current_artifact_with_an_unknown_policy_is_an_artifact_error(tmp_path):
    from tests.test_artifact_security import make_tiny_router, read, write

    path = tmp_path / "r"
    make_tiny_router().save(path)
    m = read(path)
    m["policy"] = {"type": "nonsense"}
    write(path, m)
    with pytest.raises(ArtifactError, match="unknown policy type 'nonsense'"):
        Router.load(path)
