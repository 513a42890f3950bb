"""The cluster's bootstrap action and the wheelhouse it installs from: nodes that never reach an index.

Every wheel a requirements file pins is downloaded here, once per requirements content and architecture
(``pip download --only-binary=:all: --platform ...``), into a local cache that outlives the run; staging then
uploads the folder to ``s3://<bucket>/artifacts/wheelhouse/<content hash>/`` next to the other artifacts,
and ``bootstrap/install-python-deps.sh`` installs from a copy of it with ``--no-index``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PYTHON_VERSION = "3.11"
# AL2023 (emr-7.x) ships glibc 2.34: a node runs any manylinux wheel up to that. pip does not widen an
# explicit --platform to older tags, so every tag from manylinux2014 (glibc 2.17) up is listed.
GLIBC_MINORS = range(34, 16, -1)
ARCHITECTURES = ("x86_64", "aarch64")
WHEELHOUSE_PREFIX = "artifacts/wheelhouse/"
# written last into a finished download, {wheel: sha256}: a folder without it did not finish downloading
MANIFEST = "manifest.json"
# The bootstrap action's own limit (the script re-runs itself under `timeout`): EMR's idle timer does not
# run while a cluster bootstraps, so without it a hung node bills until someone looks. Measured install
# from the wheelhouse: under a minute (docs/BENCHMARKS.md); the rest is dnf, the copy from S3 and slack.
BOOTSTRAP_TIMEOUT_SECONDS = 600
# Graviton families carry a "g" after the generation (m6g, m7g, r6gd, c7gn): aarch64 nodes
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.")


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built; ``str()`` says which pin and why."""


def architecture(instance_type: str) -> str:
    """The CPU architecture of an EC2 instance type (the wheels its nodes need)."""
    return "aarch64" if _GRAVITON.match(instance_type) else "x86_64"


def platform_tags(arch: str) -> list[str]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {ARCHITECTURES}")
    return [f"manylinux_2_{minor}_{arch}" for minor in GLIBC_MINORS] + [f"manylinux2014_{arch}"]


def cache_root() -> Path:
    """Where wheelhouses are kept between runs (``FRUITS_WHEELHOUSE_CACHE``, else the user's cache)."""
    configured = os.environ.get("FRUITS_WHEELHOUSE_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fruits" / "wheelhouse"


def cache_key(requirements: Path, arch: str) -> str:
    """What decides the wheels: the requirements' bytes, the architecture, the Python and glibc targets."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{arch} cp{PYTHON_VERSION} {' '.join(platform_tags(arch))}".encode())
    return digest.hexdigest()[:16]


def download_command(requirements: Path, arch: str, destination: Path) -> list[str]:
    platforms = [arg for tag in platform_tags(arch) for arg in ("--platform", tag)]
    return [
        sys.executable, "-m", "pip", "download",
        "--only-binary=:all:", "--no-deps", *platforms,
        "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--disable-pip-version-check", "--progress-bar", "off",
        "--requirement", str(requirements), "--dest", str(destination),
    ]  # fmt: skip


def build_wheelhouse(requirements: Path, arch: str, cache: Path | None = None) -> Path:
    """The folder of wheels for ``requirements`` on ``arch``, downloaded once per content into ``cache``."""
    cache = cache or cache_root()
    folder = cache / f"{requirements.stem}-{arch}-{cache_key(requirements, arch)}"
    if (folder / MANIFEST).is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        result = subprocess.run(
            download_command(requirements, arch, scratch), capture_output=True, text=True, check=False
        )
        if result.returncode:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            raise WheelhouseError(
                f"cannot download the {arch} wheels of {requirements.name}: "
                + ("; ".join(errors) or result.stderr.strip()[-500:])
            )
        hashes = {wheel.name: sha256_file(wheel) for wheel in sorted(scratch.glob("*.whl"))}
        (scratch / MANIFEST).write_text(json.dumps(hashes, indent=1, sort_keys=True))
        if folder.exists():  # a concurrent build finished first: same content, keep theirs
            shutil.rmtree(scratch)
        else:
            scratch.rename(folder)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, str]:
    """{wheel file name: sha256} of a built wheelhouse, hashed once when it was downloaded."""
    return json.loads((folder / MANIFEST).read_text())


def wheelhouse_hash(folder: Path) -> str:
    """The staged prefix's name: the wheels' names and bytes (same wheels, same prefix, nothing uploaded)."""
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:16]


def bootstrap_action(script_uri: str, requirements_uri: str, wheelhouse_uri: str) -> dict[str, Any]:
    """RunJobFlow's ``BootstrapActions`` entry: the script, what it installs, from where, in what time."""
    return {
        "Name": "install-python-deps",
        "ScriptBootstrapAction": {
            "Path": script_uri,
            "Args": [requirements_uri, wheelhouse_uri, str(BOOTSTRAP_TIMEOUT_SECONDS)],
        },
    }
