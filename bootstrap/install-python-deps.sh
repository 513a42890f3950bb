#!/usr/bin/env bash
# EMR bootstrap action: a Python 3.11 virtualenv with the Spark jobs' runtime dependencies, on every node.
#
#   ScriptBootstrapAction:
#     Path: s3://BUCKET/artifacts/<version>/install-python-deps.sh
#     Args: [s3://BUCKET/artifacts/<version>/requirements-emr.txt,
#            s3://BUCKET/artifacts/wheelhouse/<content hash>/, <timeout seconds>]
#
# Offline: the nodes have no route to the internet. Every wheel comes from the wheelhouse the staging task
# built for this requirements file and the nodes' architecture (fruits_platform.aws.bootstrap), copied
# from S3 through the VPC's gateway endpoint and installed with --no-index: no PyPI, no pin that
# stopped being served, at 02:00 or ever.
# The whole script runs under `timeout`: EMR's idle timer does not run while a cluster bootstraps, so a
# hung download or install would bill until someone notices. Past the limit the action exits non-zero and
# EMR ends the cluster (BOOTSTRAP_FAILURE), Airflow up or not.
#
# requirements-emr.txt is the ONNX Runtime engine's runtime (no TensorFlow); pass
# requirements-emr-tensorflow.txt instead for `features --engine tensorflow`.
# EMR runs it as the hadoop user (passwordless sudo) on the primary and on every core/task node, before
# Spark is installed. The driver and the executors import onnxruntime (or TensorFlow), pandas and Arrow, so
# every node needs the very same versions: spark-env.json then points PYSPARK_PYTHON at this virtualenv.
#
# Safe to run again: a node whose virtualenv already holds exactly these requirements is left untouched.
# Any failure exits non-zero, which makes EMR fail the cluster at start-up rather than at the first task.
set -euo pipefail

readonly LOG_PREFIX="[fruits-bootstrap]"
# spark-env.json names this path too (PYSPARK_PYTHON): change both together. The override exists so the
# tests can run the script outside /opt.
readonly VENV_DIR="${FRUITS_VENV_DIR:-/opt/fruits-venv}"
readonly PYTHON="python3.11"
readonly MARKER="${VENV_DIR}/.fruits-requirements.sha256"

log() { echo "${LOG_PREFIX} $*"; }
die() {
  echo "${LOG_PREFIX} ERROR: $*" >&2
  exit 1
}
# Anything that fails without its own message still says where, in the bootstrap action's stderr log.
on_error() {
  echo "${LOG_PREFIX} ERROR: line $2: \"$3\" exited $1" >&2
  exit "$1"
}
trap 'on_error "$?" "${LINENO}" "${BASH_COMMAND}"' ERR

[[ $# -eq 3 ]] ||
  die "usage: $(basename "$0") s3://BUCKET/PATH/requirements-emr.txt s3://BUCKET/PATH/wheelhouse/ TIMEOUT_SECONDS"
readonly REQUIREMENTS_URI="$1" WHEELHOUSE_URI="$2" TIMEOUT_SECONDS="$3"
[[ "${REQUIREMENTS_URI}" == s3://?*/?* ]] || die "expected an s3:// URI of the requirements file, got '${REQUIREMENTS_URI}'"
[[ "${WHEELHOUSE_URI}" == s3://?*/?*/ ]] || die "expected an s3://.../ folder URI of the wheelhouse, got '${WHEELHOUSE_URI}'"
[[ "${TIMEOUT_SECONDS}" =~ ^[1-9][0-9]*$ ]] || die "expected a timeout in seconds, got '${TIMEOUT_SECONDS}'"
# Re-runs itself once under timeout; --kill-after: a step that ignores SIGTERM is killed 30 s later.
if [[ -z "${FRUITS_BOOTSTRAP_BOUNDED:-}" ]]; then
  FRUITS_BOOTSTRAP_BOUNDED=1 timeout --kill-after=30 "${TIMEOUT_SECONDS}" bash "$0" "$@" && exit 0
  status=$?
  [[ ${status} -ne 124 && ${status} -ne 137 ]] || die "timed out after ${TIMEOUT_SECONDS}s: EMR ends the cluster"
  exit "${status}"
fi
# `rm -rf` below must never get a relative or top-level path from a mistyped override.
[[ "${VENV_DIR}" == /?*/?* ]] || die "refusing to manage virtualenv at '${VENV_DIR}': not an absolute path below /"

# Every `aws` call names the node's own Region. Without one, the CLI takes it from its environment or config,
# and only v2 falls back to the instance metadata; else us-east-1, whose S3 endpoint the VPC's eu-west-3
# gateway endpoint does not route: with no route out, the copy would hang until the timeout. IMDSv2: a
# session token, then the Region (link-local, no route needed).
readonly IMDS="http://169.254.169.254/latest"
node_region() {
  local token
  token="$(curl -sSf --max-time 5 --retry 3 -X PUT "${IMDS}/api/token" \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300")" &&
    curl -sSf --max-time 5 --retry 3 -H "X-aws-ec2-metadata-token: ${token}" "${IMDS}/meta-data/placement/region"
}
region="$(node_region)" || die "cannot read the node's Region from the instance metadata (${IMDS})"
[[ "${region}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "the instance metadata gave no Region: '${region}'"
readonly region

# the virtualenv must stay readable by the yarn user that runs the executors
umask 022
workdir="$(mktemp -d)"
trap 'rm -rf -- "${workdir}"' EXIT
requirements="${workdir}/requirements-emr.txt"
wheels="${workdir}/wheels"

aws s3 cp --region "${region}" --only-show-errors "${REQUIREMENTS_URI}" "${requirements}" ||
  die "cannot download ${REQUIREMENTS_URI}: does the EMR instance profile allow s3:GetObject on it?"
[[ -s "${requirements}" ]] || die "${REQUIREMENTS_URI} is empty"
wanted="$(sha256sum "${requirements}" | cut -d ' ' -f 1)"

installed=""
if [[ -f "${MARKER}" ]]; then
  installed="$(<"${MARKER}")"
fi
if [[ "${installed}" == "${wanted}" ]] && "${VENV_DIR}/bin/python" -c 'import sys'; then
  log "${VENV_DIR} already holds requirements ${wanted:0:12}: nothing to do"
  exit 0
fi

log "installing ${PYTHON}"
sudo dnf install -y python3.11 python3.11-pip || die "dnf could not install python3.11 (is this Amazon Linux 2023, emr-7.x?)"
command -v "${PYTHON}" >/dev/null || die "${PYTHON} is not on PATH after dnf install"

if [[ -e "${VENV_DIR}" ]]; then
  # a half-built or outdated virtualenv: rebuilding beats patching it, the marker is written last
  log "replacing ${VENV_DIR} (its requirements differ or a previous run did not finish)"
  sudo rm -rf -- "${VENV_DIR}"
fi
python_version="$("${PYTHON}" --version 2>&1)"
log "creating ${VENV_DIR} with ${python_version}"
sudo "${PYTHON}" -m venv "${VENV_DIR}" || die "cannot create the virtualenv ${VENV_DIR}"

log "copying the wheelhouse ${WHEELHOUSE_URI}"
aws s3 cp --region "${region}" --only-show-errors --recursive "${WHEELHOUSE_URI}" "${wheels}" ||
  die "cannot download ${WHEELHOUSE_URI}: does the EMR instance profile allow s3:GetObject on it?"
compgen -G "${wheels}/*.whl" >/dev/null || die "${WHEELHOUSE_URI} holds no wheel"

log "installing requirements ${wanted:0:12} from ${REQUIREMENTS_URI}"
# --no-index --find-links: the wheelhouse only, never an index (the nodes cannot reach one anyway).
# --no-deps: requirements-emr.txt pins the whole closure, nothing may float in unpinned; pip check proves it.
# --only-binary: a pin without a Linux wheel fails here, instead of compiling slowly on every node.
# --no-cache-dir: the wheel cache would double the space the packages take on the root volume.
sudo "${VENV_DIR}/bin/python" -m pip install \
  --no-index --find-links "${wheels}" \
  --no-cache-dir --no-deps --only-binary=:all: --disable-pip-version-check --progress-bar off \
  --requirement "${requirements}" ||
  die "pip could not install ${REQUIREMENTS_URI} from ${WHEELHOUSE_URI} (see the output above)"
sudo "${VENV_DIR}/bin/python" -m pip check ||
  die "the requirements are not a complete, consistent set: pin the missing packages in requirements-emr.txt"

# Imported as the hadoop user, not root: proves the files are readable by the users Spark runs as.
modules="h5py, matplotlib, numpy, onnxruntime, pandas, PIL, pyarrow"
# the TensorFlow variant must also be able to run the reference engine and export to ONNX
if grep -qE '^tensorflow(-cpu)?==' "${requirements}"; then
  modules="${modules}, keras, tensorflow, tf2onnx"
fi
"${VENV_DIR}/bin/python" -c "import ${modules}" ||
  die "the virtualenv cannot import the Spark jobs' dependencies (${modules})"

echo "${wanted}" | sudo tee "${MARKER}" >/dev/null
log "done in ${SECONDS}s: PYSPARK_PYTHON=${VENV_DIR}/bin/python"
