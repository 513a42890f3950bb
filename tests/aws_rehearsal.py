"""The first AWS run, rehearsed as it will happen, without AWS: `make rehearse-aws`, tests/test_rehearsal.py.

* **AWS**: moto's server on 127.0.0.1, in this process, with IAM enforcement on (moto's
  ``INITIAL_NO_AUTH_ACTION_COUNT``: three unauthenticated calls make an administrator and its key, every later
  call is authorised by moto's IAM as the caller's identity).
* **The runbook**: docs/AWS.md's block under "First real run, command by command" is extracted, not copied,
  and run by bash with the AWS CLI (``awscli``, ``AWS_ENDPOINT_URL`` pointing at the server). Steps 1-4 run
  in one shell, as the administrator (a profile whose Region is set, as "configured" in the prerequisites):
  step 1 deploys infra/ with ``aws cloudformation deploy`` and defines ``output``; step 2 attaches the stack's
  Airflow policy to an IAM user made for Airflow (its access key: a profile in a throw-away
  ``AWS_SHARED_CREDENTIALS_FILE``); step 3 creates the service-linked roles; step 4 exports the connection,
  the Variables and Airflow's profile. Steps 5 (``fruits upload`` of two images per label of data/sample)
  and 6 (the report, the clusters left) run in a second shell, the administrator's with step 1's ``output``,
  as the runbook says. Only the placeholders and the upload's source are substituted, and ``make airflow``
  is replaced by the stack below; a failing ``aws`` command fails the rehearsal even inside
  ``export X="$(...)"``, naming its step.
* **Airflow**: the local stack (``fruits_platform.local.airflow_server``: api-server, scheduler,
  dag-processor, triggerer) with step 4's environment and nothing else of AWS,
  ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=true`` (the sensors and the teardown defer to the triggerer) and
  1 s pokes (``FRUITS_EMR_POKE_SECONDS``, as the DAG tests). ``fruits_features_emr`` is unpaused and triggered
  through the REST API with the official client (``apache-airflow-client``), with the conf of the runbook's
  trigger and random weights on the worker (no ImageNet download). While the runbook runs, the stack's DB is
  migrated and the weights' ONNX export is put in the machine's cache (FRUITS_CACHE, shared with the worker:
  ``stage_artifacts`` still builds and uploads the artifact, from that cache, as any later run does).
* **The cluster**: ``tests.emr_runner.EmrStepRunner`` runs each step moto reports running, in Spark (this
  process's session), as an IAM user holding the deployed node role's policies.
* **Checks**: the run succeeds; its cluster ends TERMINATED; the outputs and the report are in the bucket
  (step 6 fetches it); the asset events read through the REST API; a second run refused by ``resolve_run``
  delivers its alert through the stack's SNS topic to an SQS queue subscribed to it.

What moto does not do, and what the rehearsal does about it (each printed when it happens):

* moto's CloudFormation skips resource types it does not implement (``AWS::S3::BucketPolicy``,
  ``AWS::Glue::Database``, ``AWS::Glue::Table``), with a warning: the rest of the stack deploys, the
  rehearsal lists the skipped types, and the bucket policy and catalog are checked only statically
  (tests/test_infra.py, tests/test_catalog.py). It also lacks ``Fn::Cidr``, resolves ``Fn::GetAZs ""`` to
  us-east-1's zones (which made the subnet public), leaves a change set's outputs empty and records a
  ``SubnetRouteTableAssociation`` without associating: ``cloudformation_as_aws`` adds those four to moto as
  CloudFormation defines them, and the template deploys unchanged.
* moto authorises EMR and SNS calls against resource ``*`` and evaluates few condition operators:
  ``iam_as_aws`` gives moto tests/test_iam_policy.py's evaluation (cluster ARNs, tag conditions, IAM's
  resource matching, RunJobFlow's creation-time checks) and SNS requests their topic's ARN. ``StringLike``
  (the PassRole conditions) stays unevaluated.
* Service quotas: moto has figures for VPC only; step 3's vCPU quota command runs (the CLI must accept it)
  and moto's refusal is expected and said (``NOT_IN_MOTO``).
* The CLI is v1 (PyPI has no v2); v1 pins EMR's endpoint over ``AWS_ENDPOINT_URL``, v2 does not:
  ``Rehearsal.cli_dir`` gives it v2's behaviour.

Mutations (``Rehearsal(mutation=...)``, or ``REHEARSAL_MUTATION`` for ``make rehearse-aws``) show that the
rehearsal fails for the reasons it exists: ``runbook`` (step 4 switches to Airflow's profile before it
reads the stack's outputs, as docs/AWS.md did), ``policy`` (the Airflow policy without
``elasticmapreduce:AddJobFlowSteps``), ``trigger-endpoint`` (the triggerer reaches no AWS endpoint).
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import functools
import ipaddress
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import unittest.mock
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psutil

from fruits_platform.local.airflow_server import (
    HOST,
    PASSWORD,
    USERNAME,
    LocalAirflow,
    free_ports,
    tail,
    wait_healthy,
)
from fruits_platform.local.processes import stop_processes
from tests.corpus import copy_sample
from tests.dags import PARSE_ONCE
from tests.emr_runner import EmrStepRunner

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOC = PROJECT_ROOT / "docs" / "AWS.md"
TEMPLATE = PROJECT_ROOT / "infra" / "fruits-infra.yaml"
RUNBOOK_HEADING = "## First real run, command by command"
DAG_ID = "fruits_features_emr"
REGION = "eu-west-3"
ADMIN_PROFILE = "rehearsal-admin"
AIRFLOW_IDENTITY = "fruits-airflow"  # the IAM user and the profile of the Airflow identity
NODE_IDENTITY = "fruits-node"  # an IAM user holding the node role's policies: the step runner's identity
IMAGES_PER_LABEL = 2
# the runbook's steps the rehearsal runs as written: 1-4 as one script (step 1 defines `output`), then
# step 5's upload, step 6 after the run
SETUP_STEPS = (1, 2, 3, 4)
# commands of the runbook moto cannot answer: run (the CLI parses and sends them), moto's refusal expected
NOT_IN_MOTO = {
    "aws service-quotas get-service-quota": (
        "NoSuchResource",
        "moto has Service Quotas figures for VPC only, not EC2's vCPU quotas",
    ),
}
RUN_SECONDS = 8 * 60
ALERT_SECONDS = 120


class RehearsalFailed(AssertionError):
    pass


def say(message: str) -> None:
    print(f"[rehearsal] {message}", flush=True)


# -- the runbook, from the doc ------------------------------------------------------------------------------
def runbook_block(doc: str) -> str:
    """The first ```bash block under RUNBOOK_HEADING."""
    start = doc.index(RUNBOOK_HEADING)
    match = re.compile(r"^```bash\n(.*?)^```", re.S | re.M).search(doc, start)
    if not match:
        raise RehearsalFailed(f"no ```bash block under {RUNBOOK_HEADING!r} in {DOC}")
    return match.group(1)


def runbook_steps(block: str) -> dict[int, str]:
    """{step number: its lines}: a step starts at its ``# N.`` comment."""
    steps: dict[int, list[str]] = {}
    current = None
    for line in block.splitlines():
        found = re.match(r"# (\d+)\. ", line)
        if found:
            current = int(found.group(1))
            steps[current] = []
        if current is not None:
            steps[current].append(line)
    return {number: "\n".join(lines) + "\n" for number, lines in steps.items()}


def command_lines(step: str) -> list[str]:
    """A step's commands, each with its continuation lines joined, comments dropped."""
    commands, pending = [], ""
    for line in step.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            commands.append(pending)
            pending = ""
    return commands


def output_function(steps: dict[int, str]) -> str:
    """Step 1's definition of ``output``."""
    return next(c for c in command_lines(steps[1]) if c.startswith("output()"))


def condition_keys(template: str) -> set[str]:
    """The tag condition keys the template's policies use (what moto is given values for)."""
    return set(re.findall(r"aws:(?:Resource|Request)Tag/[A-Za-z0-9_.:/=+@-]+", template))


# -- moto, as AWS defines what it lacks ----------------------------------------------------------------------
@contextlib.contextmanager
def cloudformation_as_aws() -> Iterator[list[str]]:
    """Adds to moto's CloudFormation what the template uses and moto lacks, as CloudFormation defines it:
    ``Fn::Cidr``, ``Fn::GetAZs ""`` (the stack's Region, not us-east-1), a change set's outputs (``deploy``
    creates stacks through a change set; moto kept the empty template's outputs), and a
    ``SubnetRouteTableAssociation`` that associates (moto only recorded it). Yields the warnings of the
    resources moto skipped."""
    from moto.cloudformation import models, parsing
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.subnets import SubnetRouteTableAssociation

    clean_json = parsing.clean_json
    execute_change_set = models.CloudFormationBackend.execute_change_set
    associate = SubnetRouteTableAssociation.__dict__["create_from_cloudformation_json"]

    def with_cidr_and_azs(resource_json, resources_map):
        if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
            block, count, bits = (clean_json(item, resources_map) for item in resource_json["Fn::Cidr"])
            network = ipaddress.ip_network(block)
            subnets = network.subnets(new_prefix=network.max_prefixlen - int(bits))
            return [str(subnet) for subnet in itertools.islice(subnets, int(count))]
        if isinstance(resource_json, dict) and resource_json.get("Fn::GetAZs") == "":
            return [f"{resources_map._region_name}{zone}" for zone in "abc"]
        return clean_json(resource_json, resources_map)

    def with_outputs(self, change_set_name, stack_name=None):
        execute_change_set(self, change_set_name, stack_name)
        for stack in self.stacks.values():
            if stack.template:
                stack._parse_template()
                stack.output_map = stack._create_output_map()

    def associated(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        created = associate.__func__(
            cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
        )
        ec2_backends[account_id][region_name].associate_route_table(
            created.route_table_id, subnet_id=created.subnet_id
        )
        return created

    skipped: list[str] = []
    show_warning = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "not supported by moto's CloudFormation" in str(message):
            skipped.append(str(message))
        else:
            show_warning(message, category, filename, lineno, file, line)

    parsing.clean_json = with_cidr_and_azs
    models.CloudFormationBackend.execute_change_set = with_outputs
    SubnetRouteTableAssociation.create_from_cloudformation_json = classmethod(associated)
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = record
            yield skipped
    finally:
        parsing.clean_json = clean_json
        models.CloudFormationBackend.execute_change_set = execute_change_set
        SubnetRouteTableAssociation.create_from_cloudformation_json = associate
        warnings.showwarning = show_warning


@contextlib.contextmanager
def iam_as_aws(condition_keys: set[str]) -> Iterator[None]:
    """tests/test_iam_policy.py's evaluation of the policies in moto (see its docstring): EMR requests act on
    their cluster's ARN with its tags as condition values, RunJobFlow's creation-time checks, IAM's resource
    matching and StringEqualsIfExists."""
    from moto.emr.responses import ElasticMapReduceResponse
    from moto.iam import policy_conditions
    from moto.iam.access_control import IAMPolicyStatement, IAMRequestBase
    from moto.sns.responses import SNSResponse

    from tests import test_iam_policy as iam_test

    saved = (
        ElasticMapReduceResponse.__dict__.get("_determine_resource"),
        SNSResponse.__dict__.get("_determine_resource"),
        IAMRequestBase.check_action_permitted,
        IAMPolicyStatement.__dict__["_match"],
        policy_conditions.CONDITION_OPERATIONS.get("StringEqualsIfExists"),
    )
    ElasticMapReduceResponse._determine_resource = lambda self: iam_test.emr_resource_and_conditions(
        self, condition_keys
    )
    # an SNS request acts on its topic (moto: on "*", which a statement scoped to the topic never matches)
    SNSResponse._determine_resource = lambda self: (
        self._get_param("TopicArn") or self._get_param("TargetArn") or "*"
    )
    IAMRequestBase.check_action_permitted = iam_test.check_action_permitted
    IAMPolicyStatement._match = staticmethod(iam_test.iam_resource_match)
    policy_conditions.CONDITION_OPERATIONS["StringEqualsIfExists"] = iam_test.string_equals_if_exists
    try:
        yield
    finally:
        for response, method in ((ElasticMapReduceResponse, saved[0]), (SNSResponse, saved[1])):
            if method is None:
                del response._determine_resource
            else:
                response._determine_resource = method
        IAMRequestBase.check_action_permitted = saved[2]
        IAMPolicyStatement._match = saved[3]
        if saved[4] is None:
            policy_conditions.CONDITION_OPERATIONS.pop("StringEqualsIfExists", None)
        else:
            policy_conditions.CONDITION_OPERATIONS["StringEqualsIfExists"] = saved[4]


@contextlib.contextmanager
def moto_server_with_iam() -> Iterator[tuple[str, dict[str, str]]]:
    """moto's server on a free port with IAM enforced after three calls: an administrator user, its
    allow-everything policy and its access key. Yields (endpoint, the administrator's key)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address=HOST, port=port)
    server.start()
    endpoint = f"http://{HOST}:{port}"
    saved = (settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count)
    try:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"3",
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=30).read()
        iam = boto3.client(
            "iam", region_name=REGION, endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="rehearsal-admin")
        everything = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="rehearsal-admin", PolicyName="all", PolicyDocument=json.dumps(everything)
        )
        key = iam.create_access_key(UserName="rehearsal-admin")["AccessKey"]
        admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        # from here on every call is authorised: an unsigned one is refused
        probe = boto3.client("s3", region_name=REGION, endpoint_url=endpoint, **admin)
        probe.list_buckets()
        yield endpoint, admin
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = saved
        server.stop()


# -- the cluster's step runner, against the server's backends ------------------------------------------------
class ServerStepRunner(EmrStepRunner):
    """``EmrStepRunner`` over the server's EMR backends of every Region (the server files each request under
    the Region it was signed for)."""

    def __init__(self, *args, endpoint: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._s3 = boto3.client("s3", region_name=self.region, endpoint_url=endpoint, **kwargs["credentials"])

    def backends(self) -> list:
        from moto.emr.models import emr_backends

        return list(emr_backends[self.account_id].values())


# -- the Airflow stack ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def airflow_stack(
    stack: LocalAirflow, env: dict[str, str], component_env: dict[str, dict[str, str]]
) -> Iterator[LocalAirflow]:
    """The stack's components (its DB migrated already), started from this process and stopped whatever
    happens; ``component_env`` adds to one component's environment (the trigger-endpoint mutation gives
    the triggerer a closed endpoint). Its pid file is the stack's own (``python -m
    fruits_platform.local.airflow_server stop --home H`` stops a stack left behind)."""
    processes: dict[str, subprocess.Popen] = {}
    try:
        stack.launch(env, processes, component_env, supervised=False)
        say(f"Airflow stack starting: {stack.url} (home {stack.home})")
        wait_healthy(stack.url, 600, alive=lambda: all(p.poll() is None for p in processes.values()))
        yield stack
    finally:
        stop_processes([psutil.Process(p.pid) for p in processes.values() if p.poll() is None])
        stack.pid_file.unlink(missing_ok=True)
        say("Airflow stack stopped")


def api_client(url: str):
    """The official REST client, with a JWT from /auth/token (the simple auth manager's admin)."""
    import airflow_client.client as airflow_client

    request = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.loads(response.read())["access_token"]
    configuration = airflow_client.Configuration(host=url, access_token=token)
    return airflow_client.ApiClient(configuration)


# -- the rehearsal -------------------------------------------------------------------------------------------
MUTATIONS = ("runbook", "policy", "trigger-endpoint")


@dataclass
class Rehearsal:
    """One rehearsal in ``workdir``; ``mutation`` one of MUTATIONS (or None)."""

    workdir: Path
    weights: Path
    mutation: str | None = None
    durations: dict[str, float] = field(default_factory=dict)
    # added to one stack component's environment, by its name (a mutation's)
    component_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mutation not in (None, *MUTATIONS):
            raise ValueError(f"unknown mutation {self.mutation!r}; known: {MUTATIONS}")
        self.bucket = f"fruits-rehearsal-{uuid.uuid4().hex[:8]}"
        self.aws_dir = self.workdir / "aws"
        self.aws_dir.mkdir(parents=True, exist_ok=True)
        self.credentials_file = self.aws_dir / "credentials"
        self.config_file = self.aws_dir / "config"
        self.failed_commands = self.aws_dir / "failed-commands"

    # -- mutated texts ---------------------------------------------------------------------------------------
    def runbook(self) -> dict[int, str]:
        steps = runbook_steps(runbook_block(DOC.read_text()))
        if self.mutation == "runbook":
            # Airflow's profile before the stack's outputs are read, as the runbook had it: the Airflow
            # identity may not describe the stack
            lines = steps[4].splitlines()
            profile = next(line for line in lines if line.startswith("export AWS_PROFILE="))
            lines.remove(profile)
            lines.insert(next(i for i, line in enumerate(lines) if not line.startswith("#")), profile)
            steps[4] = "\n".join(lines) + "\n"
            say("MUTATION runbook: step 4 exports AWS_PROFILE before it reads the stack's outputs")
        return steps

    @functools.cached_property
    def template(self) -> Path:
        """infra/'s template, or its mutated copy."""
        if self.mutation != "policy":
            return TEMPLATE
        text = TEMPLATE.read_text()
        line = "              - elasticmapreduce:AddJobFlowSteps\n"
        if text.count(line) != 1:
            raise RehearsalFailed("the policy mutation no longer finds AddJobFlowSteps in the template")
        mutated = self.workdir / "fruits-infra-mutated.yaml"
        mutated.write_text(text.replace(line, ""))
        say("MUTATION policy: the Airflow policy without elasticmapreduce:AddJobFlowSteps")
        return mutated

    # -- the pieces ------------------------------------------------------------------------------------------
    def shell_env(self, endpoint: str) -> dict[str, str]:
        """The shell the runbook runs in: no AWS settings of this machine, the CLI on the PATH,
        AWS_ENDPOINT_URL to the server, the administrator's profile (steps 1-3; step 4 exports Airflow's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
        env.update(
            PATH=os.pathsep.join(
                [str(self.cli_dir()), str(Path(sys.executable).parent), env.get("PATH", "")]
            ),
            AWS_ENDPOINT_URL=endpoint,
            AWS_SHARED_CREDENTIALS_FILE=str(self.credentials_file),
            AWS_CONFIG_FILE=str(self.config_file),
            AWS_PROFILE=ADMIN_PROFILE,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_PAGER="",
        )
        return env

    def cli_dir(self) -> Path:
        """A folder holding ``aws``: the AWS CLI (awscli, v1) honouring AWS_ENDPOINT_URL for every service, as
        CLI v2 (the runbook's) does: v1 pins the endpoints of a few services (emr, sqs, rds...) by name, over
        the environment's."""
        folder = self.workdir / "bin"
        if not (folder / "aws").exists():
            folder.mkdir(exist_ok=True)
            (folder / "aws").write_text(
                f"#!{sys.executable}\n"
                "import sys\n"
                "from awscli.customizations import overridesslcommonname\n"
                "from awscli.clidriver import main\n"
                "overridesslcommonname.SSL_COMMON_NAMES.clear()\n"
                "sys.exit(main())\n"
            )
            (folder / "aws").chmod(0o755)
        return folder

    def write_profiles(self, admin: dict[str, str], airflow: dict[str, str]) -> None:
        self.credentials_file.write_text(
            "".join(
                f"[{name}]\naws_access_key_id = {key['aws_access_key_id']}\n"
                f"aws_secret_access_key = {key['aws_secret_access_key']}\n"
                for name, key in ((ADMIN_PROFILE, admin), (AIRFLOW_IDENTITY, airflow))
            )
        )
        # the administrator's CLI is "configured for that account" (docs/AWS.md, Prerequisites): a Region;
        # Airflow's profile gets none (its connection holds the Region)
        self.config_file.write_text(f"[profile {ADMIN_PROFILE}]\nregion = {REGION}\n")

    def substitute(self, text: str, images: Path) -> str:
        replaced = {
            "<globally-unique-bucket-name>": self.bucket,
            "<airflow-user>": AIRFLOW_IDENTITY,
            "<profile-of-the-airflow-identity>": AIRFLOW_IDENTITY,
            "--source data/sample": f"--source {shlex.quote(str(images))}",
        }
        template = self.template
        if template != TEMPLATE:
            replaced["--template-file infra/fruits-infra.yaml"] = (
                f"--template-file {shlex.quote(str(template))}"
            )
        for old, new in replaced.items():
            text = text.replace(old, new)
        return text

    def script(self, steps: dict[int, str], numbers: tuple[int, ...], images: Path, env_out: Path) -> str:
        """The runbook's steps as one bash script: every failing aws command recorded (a failing command
        inside ``export X="$(...)"`` does not stop bash), commands moto lacks shown, ``make airflow``
        replaced by a dump of the environment the stack gets."""
        lines = [
            "set -o pipefail",
            f'aws() {{ command aws "$@" || {{ rc=$?; echo "step $REHEARSAL_STEP: aws $* (exit $rc)" '
            f">> {shlex.quote(str(self.failed_commands))}; return $rc; }}; }}",
        ]
        for number in numbers:
            lines += [f"REHEARSAL_STEP={number}", f"echo '[rehearsal] runbook step {number}' >&2"]
            for line in self.substitute(steps[number], images).splitlines():
                stripped = line.strip()
                lacking = next((why for cmd, why in NOT_IN_MOTO.items() if stripped.startswith(cmd)), None)
                if lacking:
                    lines.append(self.unanswered(re.sub(r"\s+#.*$", "", stripped), *lacking))
                elif stripped.startswith("make airflow"):
                    lines.append(
                        f"echo {shlex.quote(f'[rehearsal] instead of: {stripped} -- the stack starts below')}"
                    )
                    lines.append(
                        f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict("
                        f"os.environ)))' > {shlex.quote(str(env_out))}"
                    )
                else:
                    lines.append(line)
        return "\n".join(lines) + "\n"

    def unanswered(self, command: str, expected: str, why: str) -> str:
        """``command`` run, moto's refusal (``expected`` in its output) said and accepted; anything else, such
        as the CLI refusing the command's arguments, fails the rehearsal."""
        said = shlex.quote(f"[rehearsal] MOTO CANNOT ANSWER: {command} -- {why}")
        failed = shlex.quote(str(self.failed_commands))
        return (
            f'if out=$(command {command} 2>&1); then echo "$out"; else case "$out" in '
            f"*{expected}*) echo {said} ;; "
            f'*) echo "$out"; echo "step $REHEARSAL_STEP: {command}" >> {failed} ;; esac; fi'
        )

    def run_script(self, name: str, script: str, env: dict[str, str], cwd: Path = PROJECT_ROOT) -> str:
        path = self.workdir / f"{name}.sh"
        path.write_text(script)
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(path)],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        self.durations[name] = time.monotonic() - started
        output = done.stdout
        for line in output.splitlines():
            print(f"  | {line}", flush=True)
        failed = self.failed_commands.read_text() if self.failed_commands.exists() else ""
        if done.returncode or failed:
            raise RehearsalFailed(
                f"the runbook's {name} failed (exit {done.returncode})"
                + (f"; failing commands:\n{failed}" if failed else "")
                + f"\noutput:\n{output[-4000:]}"
            )
        return done.stdout

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """The whole rehearsal; raises RehearsalFailed naming what failed. Returns what it saw."""
        started = time.monotonic()
        images = copy_sample(PROJECT_ROOT / "data" / "sample", self.workdir / "images", IMAGES_PER_LABEL)
        say(
            f"substituted: bucket {self.bucket}, Airflow user and profile {AIRFLOW_IDENTITY}, "
            f"the upload's source: {IMAGES_PER_LABEL} images per label of data/sample ({images})"
        )
        steps = self.runbook()
        stack, stack_env = self.stack()
        # meanwhile: the stack's DB, and the worker's ONNX export cache (what any run after the first finds)
        with ThreadPoolExecutor(2, thread_name_prefix="rehearsal") as background:
            migrated = background.submit(stack.prepare, stack_env)
            warmed = background.submit(self.warm_export_cache)
            with (
                cloudformation_as_aws() as skipped,
                iam_as_aws(condition_keys(self.template.read_text())),
                moto_server_with_iam() as (endpoint, admin),
            ):
                exported = self.setup(endpoint, admin, steps, images, skipped)
                warmed.result()
                migrated.result()
                env = {
                    **stack_env,
                    **{k: v for k, v in exported.items() if k.startswith(("AWS_", "AIRFLOW_"))},
                }
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
                    env.pop(name, None)  # the profile of step 4, nothing else
                result = self.airflow_run(endpoint, admin, stack, env, steps)
        self.durations["total"] = time.monotonic() - started
        result["durations"] = {name: round(seconds, 1) for name, seconds in self.durations.items()}
        return result

    def stack(self) -> tuple[LocalAirflow, dict[str, str]]:
        """The local stack on free ports, and its environment before step 4's exports: this process's, without
        its AWS and Airflow settings; deferrable operators, 1 s pokes."""
        ports = free_ports(3)
        if self.mutation == "trigger-endpoint":
            (closed,) = free_ports(1)
            self.component_env["triggerer"] = {"AWS_ENDPOINT_URL": f"http://{HOST}:{closed}"}
            say(f"MUTATION trigger-endpoint: the triggerer's AWS endpoint is http://{HOST}:{closed}, closed")
        stack = LocalAirflow(self.workdir / "airflow", ports[0], 2, ports[1], ports[2])
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
        base.update(AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="true", FRUITS_EMR_POKE_SECONDS="1", **PARSE_ONCE)
        with unittest.mock.patch.dict(os.environ, base, clear=True):
            return stack, stack.env()

    def warm_export_cache(self) -> None:
        """The ONNX export of the weights into this machine's cache (FRUITS_CACHE, which the worker shares):
        stage_artifacts still builds and uploads the artifact, from the cache, as any later run does."""
        from fruits_spark import model
        from fruits_spark.contract import PARAMS
        from fruits_spark.engines.onnx import cached_onnx

        size = PARAMS["input_size"].default
        cached_onnx(model.read_weights(str(self.weights), size), size)

    def setup(self, endpoint: str, admin: dict, steps: dict[int, str], images: Path, skipped: list) -> dict:
        """The Airflow identity (a user and its key, no policy), the runbook's steps 1-4 and step 5's upload;
        returns the environment step 4 exported."""
        say(f"moto server {endpoint}, IAM enforced")
        iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint, **admin)
        iam.create_user(UserName=AIRFLOW_IDENTITY)
        key = iam.create_access_key(UserName=AIRFLOW_IDENTITY)["AccessKey"]
        self.write_profiles(
            admin, {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        )
        say(f"IAM user {AIRFLOW_IDENTITY}, its access key in profile {AIRFLOW_IDENTITY}; no policy yet")
        env_out = self.workdir / "airflow-env.json"
        shell = self.shell_env(endpoint)
        self.run_script("steps 1-4", self.script(steps, SETUP_STEPS, images, env_out), shell)
        for message in dict.fromkeys(skipped):
            say(f"NOT DEPLOYED (moto): {message}")
        exported = json.loads(env_out.read_text())
        changed = {
            k: v for k, v in exported.items() if k.startswith(("AWS_", "AIRFLOW_")) and shell.get(k) != v
        }
        say(f"step 4 exported: {sorted(changed)}")
        empty = sorted(k for k, v in changed.items() if not v.strip() or v == "None")
        if empty:
            raise RehearsalFailed(f"step 4 left these empty: {empty}")
        missing = {"AIRFLOW_VAR_FRUITS_ALERTS_TOPIC_ARN", "AIRFLOW_CONN_AWS_DEFAULT", "AWS_PROFILE"} - set(
            changed
        )
        if missing:
            raise RehearsalFailed(f"step 4 does not export {sorted(missing)}")
        # steps 5 and 6 run in another shell: the administrator's, with step 1's `output`
        upload = next(c for c in command_lines(steps[5]) if "fruits upload" in c)
        self.second_shell = {
            5: f"{output_function(steps)}\n{upload}\n",
            6: f"{output_function(steps)}\n{steps[6]}",
        }
        self.run_script("step 5 (upload)", self.script(self.second_shell, (5,), images, env_out), shell)
        return exported

    def airflow_run(
        self, endpoint: str, admin: dict[str, str], stack: LocalAirflow, env: dict[str, str], steps: dict
    ) -> dict:
        from airflow_client.client import AssetApi, DAGApi, DAGPatchBody, DagRunApi, TaskInstanceApi
        from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

        session = boto3.Session(region_name=REGION, **admin)
        clients = {
            name: session.client(name, endpoint_url=endpoint)
            for name in ("s3", "emr", "sns", "sqs", "iam", "cloudformation")
        }
        outputs = {
            o["OutputKey"]: o["OutputValue"]
            for o in clients["cloudformation"].describe_stacks(StackName="fruits")["Stacks"][0]["Outputs"]
        }
        # the alerts' subscriber: an SQS queue on the stack's topic
        queue_url = clients["sqs"].create_queue(QueueName="fruits-alerts-rehearsal")["QueueUrl"]
        queue_arn = clients["sqs"].get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        clients["sns"].subscribe(TopicArn=outputs["AlertsTopicArn"], Protocol="sqs", Endpoint=queue_arn)
        runner = ServerStepRunner(
            self.workdir / "emr",
            REGION,
            credentials=self.node_identity(clients["iam"], outputs["EmrNodeRoleName"]),
            in_process=True,
            endpoint=endpoint,
        )
        # the runbook's conf, and random weights on the worker instead of ImageNet's (no download)
        trigger_conf = {**self.trigger_conf(steps[5]), "weights": str(self.weights)}
        started = time.monotonic()
        with runner, airflow_stack(stack, env, self.component_env):
            self.durations["stack start"] = time.monotonic() - started
            api = api_client(stack.url)
            dags, runs = DAGApi(api), DagRunApi(api)
            wait_for(lambda: self._dag_parsed(dags), 300, f"{DAG_ID} parsed by the dag-processor")
            dags.patch_dag(DAG_ID, DAGPatchBody(is_paused=False))
            say(f"unpaused {DAG_ID} (REST API); triggering it with the runbook's conf {trigger_conf}")
            started = time.monotonic()
            run = runs.trigger_dag_run(
                DAG_ID, TriggerDAGRunPostBody(logical_date=dt.datetime.now(dt.UTC), conf=trigger_conf)
            )
            state = wait_for(lambda: self._ended(runs, run.dag_run_id), RUN_SECONDS, f"run {run.dag_run_id}")
            self.durations["run"] = time.monotonic() - started
            tasks = {
                ti.task_id: str(ti.state.value if ti.state else None)
                for ti in TaskInstanceApi(api).get_task_instances(DAG_ID, run.dag_run_id).task_instances
            }
            say(f"run {run.dag_run_id}: {state}; tasks {tasks}")
            say(f"steps run in Spark: {[(r.name, r.returncode) for r in runner.runs]}")
            if state != "success":
                failed = [t for t, s in tasks.items() if s in ("failed", "upstream_failed")]
                raise RehearsalFailed(
                    f"the run ended {state}; failed tasks {failed}\n"
                    + self.task_logs(stack, run.dag_run_id, failed)
                )
            result = self.check_outputs(clients, outputs, run.dag_run_id, AssetApi(api), endpoint)
            started = time.monotonic()
            result["alert"] = self.failing_variant(runs, clients["sqs"], queue_url, trigger_conf)
            self.durations["failing variant"] = time.monotonic() - started
            result.update(
                run_id=run.dag_run_id, tasks=tasks, steps=[(r.name, r.returncode) for r in runner.runs]
            )
            return result

    def node_identity(self, iam, role_name: str) -> dict[str, str]:
        """An IAM user holding the deployed node role's inline policies: the step runner's identity."""
        iam.create_user(UserName=NODE_IDENTITY)
        for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
            if isinstance(document, str):  # moto answers a stack's inline policy as Python's repr of it
                document = ast.literal_eval(document)
            iam.put_user_policy(UserName=NODE_IDENTITY, PolicyName=name, PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=NODE_IDENTITY)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    @staticmethod
    def trigger_conf(step5: str) -> dict:
        """The conf of step 5's `airflow dags trigger` (what the REST call sends instead)."""
        trigger = next(c for c in command_lines(step5) if "dags trigger" in c)
        return json.loads(shlex.split(trigger[trigger.index("--conf") :])[1])

    @staticmethod
    def _dag_parsed(dags) -> bool:
        from airflow_client.client.exceptions import NotFoundException

        try:
            dags.get_dag(DAG_ID)
            return True
        except NotFoundException:
            return False

    @staticmethod
    def _ended(runs, run_id: str) -> str | None:
        state = runs.get_dag_run(DAG_ID, run_id).state
        state = getattr(state, "value", state)
        return state if state in ("success", "failed") else None

    @staticmethod
    def task_logs(stack: LocalAirflow, run_id: str, task_ids: list[str]) -> str:
        """The errors the failed tasks logged (the local stack's log files), else their logs' ends."""
        parts = []
        for task_id in task_ids:
            folder = stack.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
            for path in sorted(folder.glob("*.log")):
                errors = []
                for line in path.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if record.get("level") == "error" and record.get("logger") != "task.stderr":
                            details = record.get("error_detail") or [{}]
                            reason = ": ".join(
                                str(details[0].get(k)) for k in ("exc_type", "exc_value") if details[0].get(k)
                            )
                            event = str(record.get("event")).strip().splitlines() or [""]
                            # a traceback: its first line and its last (the exception)
                            event = event[0] if len(event) == 1 else f"{event[0]} ... {event[-1]}"
                            errors.append(f"{event} {reason}".strip())
                parts.append(f"--- {task_id} ({path.name}): " + ("\n".join(errors) or tail(path, 10)))
        return "\n".join(parts)

    def check_outputs(self, clients, outputs, run_id, assets, endpoint) -> dict:
        emr, s3 = clients["emr"], clients["s3"]
        clusters = emr.list_clusters()["Clusters"]
        states = {c["Id"]: c["Status"]["State"] for c in clusters}
        say(f"clusters: {states}")
        if len(clusters) != 1 or set(states.values()) != {"TERMINATED"}:
            raise RehearsalFailed(f"expected one TERMINATED cluster, found {states}")
        prefix = outputs["OutputPrefix"]
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
        features = [k for k in keys if k.startswith(f"{prefix}features/dt=") and k.endswith(".parquet")]
        if not features or f"{prefix}report.html" not in keys:
            raise RehearsalFailed(f"outputs missing under s3://{self.bucket}/{prefix}: {keys}")
        say(
            f"outputs: {len(keys)} objects under s3://{self.bucket}/{prefix} "
            f"({len(features)} features files, report.html)"
        )
        # the runbook's step 6 (the second shell): the report, and no cluster left
        fetched = self.workdir / "step6"
        fetched.mkdir(exist_ok=True)
        listed = self.run_script(
            "step 6",
            self.script(self.second_shell, (6,), self.workdir, self.workdir / "unused.json"),
            self.shell_env(endpoint),
            cwd=fetched,
        )
        if not (fetched / "report.html").is_file():
            raise RehearsalFailed("step 6 did not fetch report.html")
        if json.loads(listed[listed.find("{") :] if "{" in listed else "{}").get("Clusters"):
            raise RehearsalFailed(f"step 6 lists active clusters: {listed}")
        events = assets.get_asset_events(source_dag_id=DAG_ID, source_run_id=run_id).asset_events
        uris = sorted(event.uri for event in events)
        say(f"asset events through the REST API: {uris}")
        if not any("features" in u for u in uris) or not any("pca" in u for u in uris):
            raise RehearsalFailed(f"expected features and pca asset events, got {uris}")
        return {"clusters": states, "outputs": keys, "asset_events": uris}

    def failing_variant(self, runs, sqs, queue_url: str, conf: dict) -> str:
        """A run refused by resolve_run (a conf key no param declares) alerts through the stack's topic."""
        from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

        bad = {**conf, "input_path": conf.get("input", "")}
        run = runs.trigger_dag_run(
            DAG_ID, TriggerDAGRunPostBody(logical_date=dt.datetime.now(dt.UTC), conf=bad)
        )
        say(f"failing variant {run.dag_run_id}: conf {bad}")
        state = wait_for(lambda: self._ended(runs, run.dag_run_id), 300, f"run {run.dag_run_id}")
        if state != "failed":
            raise RehearsalFailed(f"the failing variant ended {state}")

        def alert() -> str | None:
            for message in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", []):
                body = json.loads(message["Body"])
                if run.dag_run_id in body.get("Message", ""):
                    return body["Message"]
            return None

        text = wait_for(alert, ALERT_SECONDS, "the failing run's alert on the SQS queue")
        say(f"alert delivered to SQS: {text.splitlines()[0]}")
        return text


def wait_for(check: Callable, timeout: float, what: str, every: float = 2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise RehearsalFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> int:
    """``make rehearse-aws``: the rehearsal with its own Spark session and random weights."""
    from fruits_platform.local.spark_settings import local_session
    from tests.random_backbone import save_random_backbone

    mutation = os.environ.get("REHEARSAL_MUTATION") or None
    with tempfile.TemporaryDirectory(prefix="fruits-rehearsal-") as scratch:
        workdir = Path(scratch)
        (workdir / "weights").mkdir()
        weights = save_random_backbone(workdir / "weights", seed=20261123)
        spark = local_session(
            "local[2]", "fruits-rehearsal", {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "2g"}
        )
        try:
            result = Rehearsal(workdir, weights, mutation).run()
        except RehearsalFailed as failure:
            say(f"FAILED: {failure}")
            return 1
        finally:
            spark.stop()
    say(f"PASSED in {result['durations']['total']:.0f} s: {json.dumps(result['durations'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
