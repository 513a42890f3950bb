"""The DAG under IAM enforcement, as an identity holding exactly infra/'s Airflow policy; the cluster's step
runner as an identity holding exactly the node role's policy.

The template's policies are resolved for moto's account (123456789012) and the test bucket, attached to two
IAM users in moto, and the run uses their access keys with moto's IAM enforcement on
(``moto.core.enable_iam_authentication``). Every call the DAG and the nodes make must be allowed; calls the
policies leave out must be denied.

What moto's enforcement does not do, and what this module adds or leaves out (moto 5.2):

* moto authorizes every non-S3 request against resource ``*``: a statement scoped to cluster ARNs would
  never match. ``_determine_resource`` below gives EMR requests their cluster's ARN, as AWS does.
* moto evaluates ``StringEquals`` conditions only, and only with values a request supplies (identity
  policies get none: conditions pass vacuously). The patch below supplies ``aws:ResourceTag/<key>`` (the
  cluster's tags) and ``aws:RequestTag/<key>`` (RunJobFlow's tags) for EMR requests. moto then treats an
  Allow whose condition fails as a Deny; each EMR action has one statement here, so the outcome is AWS's.
* moto matches a Resource pattern as a regular expression (``$`` anchors there); IAM matches it literally
  but for ``*`` and ``?``. ``iam_semantics`` below gives moto IAM's matching, so that the EMRFS marker key
  ``outputs_$folder$`` is evaluated as AWS would, and IAM's ``StringEqualsIfExists`` (absent key: passes).
* Not evaluated at all: ``StringLike`` (the PassRole conditions), the implicit ``iam:PassRole`` and
  ``iam:CreateServiceLinkedRole`` checks RunJobFlow makes on AWS, the bucket policy, SCPs. Those are
  checked statically in tests/test_infra.py and by the first-run checklist in docs/AWS.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading

import boto3
import pytest
from cfnlint.decode import decode_str
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID, enable_iam_authentication

from fruits_platform.aws.cluster import cluster_tags
from fruits_platform.aws.settings import DEFAULT_OUTPUT_PREFIX
from tests.emr_runner import EmrStepRunner
from tests.test_assets import latest_event_id
from tests.test_dag_emr import (
    BUCKET,
    IMAGES_PER_LABEL,
    JOB_FLOW_ROLE,
    LABELS,
    LOGICAL_DATE,
    PROJECT_ROOT,
    REGION,
    SERVICE_ROLE,
    UPLOAD_DAY,
    assert_a_successful_run,
    base_conf,
    create_bucket,
    create_subnet,
    overrides_for,
    set_emr_variables,
    xcom,
)

pytestmark = pytest.mark.slow

TEMPLATE = PROJECT_ROOT / "infra" / "fruits-infra.yaml"
STACK = "fruits"
OUTPUT = DEFAULT_OUTPUT_PREFIX
# the stack as deployed with the template's defaults: the DAG writes under the same default output root
PARAMETERS = {"OutputPrefix": DEFAULT_OUTPUT_PREFIX}


# -- the template's policies, resolved for moto's account -------------------------------------------------
def resolve(value, names: dict[str, str]):
    """Ref / Fn::GetAtt / Fn::Sub of the template's policies, with the deployed stack's values."""
    if isinstance(value, list):
        return [resolve(item, names) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"}:
        return names[value["Ref"]]
    if set(value) == {"Fn::GetAtt"}:
        return names[".".join(value["Fn::GetAtt"])]
    if set(value) == {"Fn::Sub"}:
        text, local = value["Fn::Sub"], {}
        if isinstance(text, list):  # [template, {name: value}]
            text, local = text[0], {name: resolve(item, names) for name, item in text[1].items()}
        return re.sub(r"\$\{([^}]+)\}", lambda match: {**names, **local}[match.group(1)], text)
    if set(value) == {"Fn::Select"}:
        index, items = value["Fn::Select"]
        return resolve(items, names)[index]
    if set(value) == {"Fn::Split"}:
        separator, text = value["Fn::Split"]
        return resolve(text, names).split(separator)
    return {key: resolve(item, names) for key, item in value.items()}


def stack_names() -> dict[str, str]:
    bucket_arn = f"arn:aws:s3:::{BUCKET}"
    return {
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": DEFAULT_ACCOUNT_ID,
        "AWS::StackName": STACK,
        "DataBucket": BUCKET,
        "DataBucket.Arn": bucket_arn,
        "EmrServiceRole.Arn": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/{SERVICE_ROLE}",
        "EmrNodeRole.Arn": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/{JOB_FLOW_ROLE}",
        # an SNS topic's Ref is its ARN
        "AlertsTopic": f"arn:aws:sns:{REGION}:{DEFAULT_ACCOUNT_ID}:{STACK}-alerts",
        **PARAMETERS,
    }


def template_policies() -> dict[str, dict]:
    template, errors = decode_str(TEMPLATE.read_text())
    assert not errors
    resources = template["Resources"]
    names = stack_names()
    # the bucket's policy; the catalog's (Glue read) is tests/test_catalog.py's
    (node,) = [
        p for p in resources["EmrNodeRole"]["Properties"]["Policies"] if p["PolicyName"] == "data-bucket"
    ]
    return {
        "airflow": resolve(resources["AirflowPolicy"]["Properties"]["PolicyDocument"], names),
        "node": resolve(node["PolicyDocument"], names),
    }


def tag_condition_keys(*documents: dict) -> set[str]:
    keys = set()
    for document in documents:
        for statement in document["Statement"]:
            for values in statement.get("Condition", {}).values():
                keys.update(k for k in values if k.startswith(("aws:ResourceTag/", "aws:RequestTag/")))
    return keys


# -- what moto needs to evaluate them like IAM (see the module docstring) -----------------------------------
_request = threading.local()
CLUSTER_PARAMS = ("ClusterId", "JobFlowId", "ResourceId")


def emr_resource_and_conditions(response, condition_keys: set[str]) -> str:
    """The ARN an EMR request acts on, and (stashed for the check below) its tag condition values."""
    values = dict.fromkeys(condition_keys, "")  # an absent tag must fail StringEquals, not pass vacuously
    cluster_id = next((response._get_param(p) for p in CLUSTER_PARAMS if response._get_param(p)), None)
    cluster_id = cluster_id or (response._get_param("JobFlowIds") or [None])[0]
    if response._get_action() == "RunJobFlow":
        for tag in response._get_param("Tags", []):
            values[f"aws:RequestTag/{tag['Key']}"] = tag["Value"]
        _request.run_job_flow_params = {p for p in CREATION_TIME_ACTIONS if response._get_param(p)}
        resource = "*"
    elif cluster_id:
        cluster = response.backend.clusters.get(cluster_id)
        for tag in cluster.tags if cluster else []:
            values[f"aws:ResourceTag/{tag['Key']}"] = tag["Value"]
        resource = f"arn:aws:elasticmapreduce:{REGION}:{DEFAULT_ACCOUNT_ID}:cluster/{cluster_id}"
    else:
        resource = "*"
    _request.conditions = values
    return resource


# What RunJobFlow may also check on AWS, as the same caller, while it creates the cluster: AddTags for its
# Tags, PutAutoTerminationPolicy for its idle timeout. The new cluster has no tags yet (no aws:ResourceTag).
CREATION_TIME_ACTIONS = {
    "Tags": "elasticmapreduce:AddTags",
    "AutoTerminationPolicy": "elasticmapreduce:PutAutoTerminationPolicy",
}
# The creation-time checks whose request context carries the request's tags (aws:RequestTag): AddTags
# does; the Service Authorization Reference lists no request-tag condition key for PutAutoTerminationPolicy,
# so its check gets none (docs/AWS.md, Review findings).
TAKES_REQUEST_TAGS = {"elasticmapreduce:AddTags"}


def creation_check_values(action: str, values: dict[str, str] | None) -> dict[str, str] | None:
    """The condition values AWS can give ``action``'s check while RunJobFlow creates the cluster (``values``:
    RunJobFlow's): no request tags unless the action takes them, no resource tags (the cluster has none)."""
    if values is None or action in TAKES_REQUEST_TAGS:
        return values
    return dict.fromkeys(values, "")


NEW_CLUSTER_ARN = f"arn:aws:elasticmapreduce:{REGION}:{DEFAULT_ACCOUNT_ID}:cluster/j-BEING-CREATED"


def permitted_by(policies: list, action: str, resource: str, values: dict | None) -> bool:
    from moto.iam.access_control import IAMPolicy, PermissionResult

    results = [IAMPolicy(policy).is_action_permitted(action, resource, None, values) for policy in policies]
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


def check_action_permitted(self, resource: str) -> None:
    """moto's IAMRequestBase.check_action_permitted, passing the stashed condition values; RunJobFlow also
    gets AWS's creation-time checks (moto makes none)."""
    values, _request.conditions = getattr(_request, "conditions", None), None
    policies = self._access_key.collect_policies()
    checks = [(self._action, resource, values)]
    if self._action == "elasticmapreduce:RunJobFlow":
        params = getattr(_request, "run_job_flow_params", set())
        checks += [
            (action, NEW_CLUSTER_ARN, creation_check_values(action, values))
            for param, action in CREATION_TIME_ACTIONS.items()
            if param in params
        ]
        _request.creation_checks = getattr(_request, "creation_checks", []) + [a for a, _, _ in checks[1:]]
    for action, on, given in checks:
        if not permitted_by(policies, action, on, given):
            self._raise_access_denied()


def iam_resource_match(pattern: str, string: str) -> re.Match[str] | None:
    """IAM's Resource matching: literal but for ``*`` (any run) and ``?`` (one character)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.match(f"^{regex}$", string, re.DOTALL)


def string_equals_if_exists(expected: list[str] | str, actual: str) -> bool:
    """IAM's StringEqualsIfExists; an absent tag arrives here as "" (emr_resource_and_conditions)."""
    return actual == "" or actual in ([expected] if isinstance(expected, str) else expected)


@pytest.fixture(autouse=True)
def iam_semantics(monkeypatch):
    from moto.iam import policy_conditions
    from moto.iam.access_control import IAMPolicyStatement

    monkeypatch.setattr(IAMPolicyStatement, "_match", staticmethod(iam_resource_match))
    monkeypatch.setitem(
        policy_conditions.CONDITION_OPERATIONS, "StringEqualsIfExists", string_equals_if_exists
    )


READ_EVERYTHING = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:Get*", "s3:List*", "elasticmapreduce:Describe*", "elasticmapreduce:List*"],
            "Resource": "*",
        }
    ],
}


def user_with_policy(iam, name: str, document: dict) -> dict[str, str]:
    iam.create_user(UserName=name)
    arn = iam.create_policy(PolicyName=f"{name}-policy", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


@pytest.fixture
def enforced(monkeypatch, sample_dir):
    """moto with the bucket, a tagged subnet and the uploads (set up unauthenticated), then IAM enforced;
    yields the two identities' credentials. The environment holds the Airflow identity's key."""
    from moto.emr.responses import ElasticMapReduceResponse
    from moto.iam.access_control import IAMRequestBase

    policies = template_policies()
    keys = tag_condition_keys(*policies.values())
    monkeypatch.setattr(
        ElasticMapReduceResponse,
        "_determine_resource",
        lambda self: emr_resource_and_conditions(self, keys),
        raising=False,
    )
    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", check_action_permitted)
    with mock_aws(config={"core": {"mock_credentials": False}}):
        s3 = boto3.client("s3", region_name=REGION)
        create_bucket(s3)
        for label in LABELS:
            for path in sorted((sample_dir / label).glob("*.jpg"))[:IMAGES_PER_LABEL]:
                s3.upload_file(str(path), BUCKET, f"uploads/dt={UPLOAD_DAY}/{label}/{path.name}")
        set_emr_variables(monkeypatch, create_subnet())
        # another team's cluster in the same account, tagged for its own project
        other = boto3.client("emr", region_name=REGION).run_job_flow(
            Name="other-team",
            Instances={"KeepJobFlowAliveWhenNoSteps": True},
            Tags=[{"Key": "project", "Value": "other-team"}],
        )["JobFlowId"]
        monkeypatch.setenv("FRUITS_TEST_OTHER_CLUSTER", other)
        iam = boto3.client("iam", region_name=REGION)
        identities = {name: user_with_policy(iam, f"fruits-{name}", doc) for name, doc in policies.items()}
        # the test's own reads of what a run left (not the DAG's: it runs as "airflow")
        identities["checks"] = user_with_policy(iam, "fruits-test-checks", READ_EVERYTHING)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", identities["airflow"]["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", identities["airflow"]["aws_secret_access_key"])
        with enable_iam_authentication():
            yield identities


def client(service: str, identity: dict[str, str]):
    return boto3.client(service, region_name=REGION, **identity)


def denied(call) -> bool:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as error:
        # moto answers a JSON-protocol service's denial with IAM's XML body: botocore then reports code
        # "403" and the XML (Code AccessDenied) as the message
        found = error.response["Error"]
        return "AccessDenied" in found.get("Code", "") or "<Code>AccessDenied</Code>" in found.get(
            "Message", ""
        )
    return False


# -- the tests ----------------------------------------------------------------------------------------------
def test_the_dag_runs_with_exactly_the_airflow_policy(emr_dag, enforced, tmp_path, random_weights, spark):
    """Every AWS call of a successful run (guards, staging, cluster, steps, teardown, report) is allowed to
    the Airflow identity; every S3 call of the steps is allowed to the node identity. The run is also the
    EMR DAG's success test: what it leaves is checked by tests/test_dag_emr.py's assert_a_successful_run."""
    since = latest_event_id()
    with EmrStepRunner(tmp_path / "emr", credentials=enforced["node"], in_process=True) as runner:
        dagrun = emr_dag.test(
            run_after=dt.datetime(2026, 11, 8, 3, tzinfo=dt.UTC),
            logical_date=LOGICAL_DATE,
            run_conf=base_conf(random_weights),
        )
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}

    assert_a_successful_run(
        dagrun,
        states,
        runner,
        client("s3", enforced["checks"]),
        client("emr", enforced["checks"]),
        since,
        len(LABELS) * IMAGES_PER_LABEL,
    )
    # the cluster was created with its tags and idle timeout, which AWS authorises separately
    assert set(getattr(_request, "creation_checks", [])) == set(CREATION_TIME_ACTIONS.values())
    summary = xcom(dagrun, "report_cost")
    emr = client("emr", enforced["airflow"])
    # every step the DAG added ran, as the node identity, and succeeded
    added = [step["Name"] for step in reversed(emr.list_steps(ClusterId=summary["cluster_id"])["Steps"])]
    assert added[0] == "ingest"
    assert [(run.name, run.returncode) for run in runner.runs] == [(name, 0) for name in added]
    # as the Airflow identity (the outcome and the report's cost: assert_a_successful_run)
    assert emr.describe_cluster(ClusterId=summary["cluster_id"])["Cluster"]["Status"]["State"] == "TERMINATED"


def test_calls_outside_the_policies_are_denied(enforced):
    airflow, node = client("s3", enforced["airflow"]), client("s3", enforced["node"])
    upload = f"uploads/dt={UPLOAD_DAY}/apple/x.jpg"

    # the policies do allow these (so the denials below are the policies', not a broken setup)
    assert airflow.list_objects_v2(Bucket=BUCKET, Prefix="uploads/")["KeyCount"] > 0
    node.put_object(Bucket=BUCKET, Key=f"{OUTPUT}images/dt=x/part-0.parquet", Body=b"x")
    node.delete_object(Bucket=BUCKET, Key=f"{OUTPUT}images/dt=x/part-0.parquet")
    # Airflow never deletes; a node can neither delete uploads nor replace staged code
    assert denied(lambda: airflow.delete_object(Bucket=BUCKET, Key=upload))
    assert denied(lambda: node.delete_object(Bucket=BUCKET, Key=upload))
    assert denied(lambda: node.put_object(Bucket=BUCKET, Key="artifacts/abc/fruits_spark.zip", Body=b"x"))
    assert denied(lambda: node.put_object(Bucket=BUCKET, Key=upload, Body=b"x"))
    # nothing outside S3 for the nodes
    assert denied(lambda: client("emr", enforced["node"]).list_clusters())


def test_nodes_may_write_the_folder_markers_of_the_output_root(enforced):
    """A fresh bucket has no output root yet: S3A (emr-7.10.0's s3://) marks it with "outputs/", EMRFS with
    "outputs_$folder$" beside it, and the first write of a day fails if the node role may not write that."""
    node = client("s3", enforced["node"])
    root = OUTPUT.rstrip("/")
    for marker in (f"{root}/", f"{root}_$folder$", f"{OUTPUT}features_$folder$", f"{OUTPUT}features/"):
        node.put_object(Bucket=BUCKET, Key=marker, Body=b"")
        node.delete_object(Bucket=BUCKET, Key=marker)
    # only the output root's own marker: not another folder's at the bucket's top
    for other in ("uploads_$folder$", "artifacts_$folder$", f"{root}x_$folder$", f"{root}_$folder$x"):
        assert denied(lambda key=other: node.put_object(Bucket=BUCKET, Key=key, Body=b"")), other


def test_only_the_projects_clusters_can_be_stepped_or_terminated(enforced):
    emr = client("emr", enforced["airflow"])
    tags = [
        {"Key": "project", "Value": "fruits"},
        {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"},
    ]
    instances = {"KeepJobFlowAliveWhenNoSteps": True}
    step = [{"Name": "x", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}]
    # RunJobFlow without the project (or the EMR managed-policy) tag is refused
    assert denied(lambda: emr.run_job_flow(Name="fruits-features x", Instances=instances, Tags=tags[1:]))
    assert denied(lambda: emr.run_job_flow(Name="fruits-features x", Instances=instances, Tags=tags[:1]))
    ours = emr.run_job_flow(Name="fruits-features x", Instances=instances, Tags=tags)["JobFlowId"]
    theirs = os.environ["FRUITS_TEST_OTHER_CLUSTER"]

    emr.add_job_flow_steps(JobFlowId=ours, Steps=step)
    assert denied(lambda: emr.add_job_flow_steps(JobFlowId=theirs, Steps=step))
    assert denied(lambda: emr.terminate_job_flows(JobFlowIds=[theirs]))
    idle = {"IdleTimeout": 60}
    assert denied(lambda: emr.put_auto_termination_policy(ClusterId=theirs, AutoTerminationPolicy=idle))
    emr.describe_cluster(ClusterId=theirs)  # read-only: finding the run's cluster means describing others
    emr.terminate_job_flows(JobFlowIds=[ours])


def test_creation_time_checks_allow_exactly_the_tags_the_dag_sends(emr_dag):
    """The template's statements, evaluated by moto's IAM engine as AWS evaluates RunJobFlow's implicit
    AddTags (with the request's tags: those the DAG's cluster definition carries) and
    PutAutoTerminationPolicy (no request tags: it takes none), with no resource tags yet."""
    policy = json.dumps(template_policies()["airflow"])
    overrides = overrides_for(
        tags=cluster_tags(emr_dag.dag_id, "scheduled__2026-11-08T02:00:00+00:00", UPLOAD_DAY)
    )
    assert set(CREATION_TIME_ACTIONS) <= set(overrides), "the DAG no longer sends tags or an idle timeout"
    sent = {tag["Key"]: tag["Value"] for tag in overrides["Tags"]}
    keys = tag_condition_keys(template_policies()["airflow"])

    def values(tags: dict[str, str]) -> dict[str, str]:
        return dict.fromkeys(keys, "") | {f"aws:RequestTag/{k}": v for k, v in tags.items()}

    add_tags, bound = CREATION_TIME_ACTIONS["Tags"], CREATION_TIME_ACTIONS["AutoTerminationPolicy"]
    assert permitted_by([policy], add_tags, NEW_CLUSTER_ARN, values(sent))
    # another project's tags, or none: refused
    assert not permitted_by([policy], add_tags, NEW_CLUSTER_ARN, values({**sent, "project": "other"}))
    assert not permitted_by([policy], add_tags, NEW_CLUSTER_ARN, values({}))

    # the idle timeout of the new cluster, which carries no tag yet, and of a cluster of this project
    assert permitted_by([policy], bound, NEW_CLUSTER_ARN, creation_check_values(bound, values(sent)))
    fruits_cluster = dict.fromkeys(keys, "") | {"aws:ResourceTag/project": "fruits"}
    assert permitted_by([policy], bound, NEW_CLUSTER_ARN, fruits_cluster)
    # never on another project's cluster
    other_cluster = dict.fromkeys(keys, "") | {"aws:ResourceTag/project": "other"}
    assert not permitted_by([policy], bound, NEW_CLUSTER_ARN, other_cluster)
    assert permitted_by([policy], "elasticmapreduce:RunJobFlow", "*", values(sent))
