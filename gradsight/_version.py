"""The package version: package.json holds it (pyproject reads it through hatch-nodejs-version).

An installed gradsight answers from its metadata; a source checkout that is not installed
reads the repository's package.json. The protocol version is a separate fact (the schema's).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _package_version() -> str:
    try:
        return version("gradsight")
    except PackageNotFoundError:
        try:
            return str(json.loads((Path(__file__).resolve().parents[1] / "package.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "0+unknown"


__version__ = _package_version()
