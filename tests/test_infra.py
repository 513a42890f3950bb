"""The one-time AWS stack: cfn-lint clean, and the security properties infra/README.md promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode_str

from fruits_platform.aws.settings import DEFAULT_OUTPUT_PREFIX
from fruits_spark.contract import DATASETS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT_ROOT / "infra" / "fruits-infra.yaml"

# Regions in EU member states; eu-west-2 (London) and eu-central-2 (Zurich) are not
EU_MEMBER_STATE_REGIONS = {"eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-3"}
BUCKET_ARN = {"Fn::GetAtt": ["DataBucket", "Arn"]}
AIRFLOW_EMR_ACTIONS = {
    "elasticmapreduce:RunJobFlow",
    "elasticmapreduce:DescribeCluster",
    "elasticmapreduce:ListClusters",
    "elasticmapreduce:AddJobFlowSteps",
    "elasticmapreduce:DescribeStep",
    "elasticmapreduce:ListSteps",
    "elasticmapreduce:TerminateJobFlows",
    "elasticmapreduce:AddTags",
    "elasticmapreduce:PutAutoTerminationPolicy",
}


@pytest.fixture(scope="module")
def template() -> dict:
    decoded, errors = decode_str(TEMPLATE.read_text())
    assert not errors, [str(error) for error in errors]
    return decoded


def resources_of_type(template: dict, resource_type: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == resource_type}


def properties(template: dict, logical_id: str) -> dict:
    return template["Resources"][logical_id]["Properties"]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def statements_of(document: dict) -> list[dict]:
    return as_list(document["Statement"])


def parameter_default(template: dict, value):
    """A literal, or the default of the parameter it refers to."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def is_bucket_or_its_objects(resource) -> bool:
    if resource == BUCKET_ARN:
        return True
    return isinstance(resource, dict) and resource.get("Fn::Sub") == "${DataBucket.Arn}/*"


def node_role_statements(template: dict) -> list[dict]:
    return [
        statement
        for policy in properties(template, "EmrNodeRole")["Policies"]
        for statement in statements_of(policy["PolicyDocument"])
    ]


def airflow_statements(template: dict) -> list[dict]:
    return statements_of(properties(template, "AirflowPolicy")["PolicyDocument"])


def cfn_lint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "cfn-lint"
    return str(beside_python) if beside_python.exists() else shutil.which("cfn-lint")


def test_cfn_lint_reports_nothing():
    binary = cfn_lint_binary()
    if binary is None:
        pytest.skip("cfn-lint is not installed (the dev extra provides it)")
    # exit 0 only when there is no error, no warning and no informational finding
    result = subprocess.run(
        [binary, "--regions", "eu-west-3", "--", str(TEMPLATE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_holds_no_account_id_or_fixed_partition():
    text = TEMPLATE.read_text()
    assert not re.search(r"\b\d{12}\b", text), "use ${AWS::AccountId}"
    assert "arn:aws:" not in text, "use arn:${AWS::Partition}:"


def test_only_regions_in_eu_member_states_are_accepted(template: dict):
    allowed = None
    for rule in template["Rules"].values():
        for assertion in rule["Assertions"]:
            contains = assertion["Assert"].get("Fn::Contains")
            if contains and contains[1] == {"Ref": "AWS::Region"}:
                allowed = set(contains[0])
    assert allowed is not None, "no Rules assertion checks AWS::Region"
    assert "eu-west-3" in allowed
    assert allowed <= EU_MEMBER_STATE_REGIONS, f"outside the EU: {sorted(allowed - EU_MEMBER_STATE_REGIONS)}"


def test_bucket_is_encrypted_private_and_owner_enforced(template: dict):
    bucket = properties(template, "DataBucket")
    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    algorithm = encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
    assert algorithm in {"AES256", "aws:kms", "aws:kms:dsse"}
    assert encryption["BucketKeyEnabled"] is True
    block = bucket["PublicAccessBlockConfiguration"]
    for setting in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        assert block[setting] is True, setting
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_bucket_policy_refuses_plain_http(template: dict):
    (policy,) = resources_of_type(template, "AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": "DataBucket"}
    denials = [
        s
        for s in statements_of(policy["Properties"]["PolicyDocument"])
        if s["Effect"] == "Deny" and s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    assert denials, "no statement denies requests without TLS"
    resources = as_list(denials[0]["Resource"])
    assert BUCKET_ARN in resources
    assert {"Fn::Sub": "${DataBucket.Arn}/*"} in resources


def test_lifecycle_expires_logs_and_old_artifact_versions(template: dict):
    rules = properties(template, "DataBucket")["LifecycleConfiguration"]["Rules"]
    by_prefix = {rule.get("Prefix"): rule for rule in rules if rule["Status"] == "Enabled"}
    logs = by_prefix["emr-logs/"]
    assert 0 < parameter_default(template, logs["ExpirationInDays"]) <= 30
    artifacts = by_prefix["artifacts/"]
    assert parameter_default(template, artifacts["NoncurrentVersionExpiration"]["NoncurrentDays"]) > 0
    assert properties(template, "DataBucket")["VersioningConfiguration"]["Status"] == "Enabled"


# EMRFS's marker of the output root, "<root>_$folder$" beside "<root>/": the root is OutputPrefix's one
# segment (its AllowedPattern), without the slash
OUTPUT_ROOT_MARKER = {
    "Fn::Sub": [
        "${DataBucket.Arn}/${OutputRoot}_$folder$",
        {"OutputRoot": {"Fn::Select": [0, {"Fn::Split": ["/", {"Ref": "OutputPrefix"}]}]}},
    ]
}


def is_output_or_log_prefix(resource) -> bool:
    return resource == OUTPUT_ROOT_MARKER or (
        isinstance(resource, dict)
        and resource.get("Fn::Sub") in ("${DataBucket.Arn}/${OutputPrefix}*", "${DataBucket.Arn}/emr-logs/*")
    )


def test_node_role_reaches_the_bucket_and_nothing_else(template: dict):
    """The bucket, and the catalog's database read (tests/test_catalog.py checks those statements)."""
    statements = node_role_statements(template)
    assert statements
    granted = set()
    for statement in statements:
        actions = as_list(statement["Action"])
        if all(action.startswith("glue:") and "*" not in action for action in actions):
            continue
        assert all(action.startswith("s3:") and "*" not in action for action in actions), actions
        for resource in as_list(statement["Resource"]):
            assert is_bucket_or_its_objects(resource) or is_output_or_log_prefix(resource), (
                f"{actions} on {resource}"
            )
        granted.update(actions)
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= granted


def test_node_role_writes_only_outputs_and_logs(template: dict):
    """A node (any code running on the cluster) must not delete uploads/ nor replace staged artifacts/."""
    for statement in node_role_statements(template):
        writes = {"s3:PutObject", "s3:DeleteObject"} & set(as_list(statement["Action"]))
        if writes:
            assert all(is_output_or_log_prefix(r) for r in as_list(statement["Resource"])), statement
    # what the DAG assumes when the Variable fruits_output_prefix is unset
    assert parameter_default(template, {"Ref": "OutputPrefix"}) == DEFAULT_OUTPUT_PREFIX
    assert template["Outputs"]["OutputPrefix"]["Value"] == {"Ref": "OutputPrefix"}


def test_nodes_may_write_the_marker_emrfs_puts_beside_the_output_root(template: dict):
    """On a fresh bucket EMRFS creates "<root>_$folder$" with the root's first write: outside "<root>/*"."""
    (writes,) = [s for s in node_role_statements(template) if "s3:PutObject" in as_list(s["Action"])]
    assert OUTPUT_ROOT_MARKER in as_list(writes["Resource"])
    # the marker is derived from the prefix's only segment: a nested prefix would need another rule
    pattern = re.compile(template["Parameters"]["OutputPrefix"]["AllowedPattern"])
    assert pattern.fullmatch(DEFAULT_OUTPUT_PREFIX)
    assert not pattern.fullmatch("outputs/run-1/")
    assert not pattern.fullmatch("outputs")


def test_the_default_output_root_is_not_named_after_a_dataset():
    """Each dataset goes to <output><dataset>/dt=...: an output root named "features/" gave
    s3://<bucket>/features/features/dt=... ."""
    root = DEFAULT_OUTPUT_PREFIX.rstrip("/")
    assert DEFAULT_OUTPUT_PREFIX.endswith("/")
    assert "/" not in root
    assert root not in DATASETS, f"{DEFAULT_OUTPUT_PREFIX}{root}/dt=... repeats the dataset's name"


def test_airflow_policy_never_deletes_objects(template: dict):
    actions = {a for s in airflow_statements(template) for a in as_list(s["Action"])}
    assert "s3:DeleteObject" not in actions


def test_first_cluster_may_create_only_the_emr_cleanup_role(template: dict):
    (statement,) = [
        s for s in airflow_statements(template) if "iam:CreateServiceLinkedRole" in as_list(s["Action"])
    ]
    assert statement["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"}
    }
    resource = statement["Resource"]["Fn::Sub"]
    assert resource.endswith(
        "role/aws-service-role/elasticmapreduce.amazonaws.com*/AWSServiceRoleForEMRCleanup*"
    )


def statements_allowing(template: dict, action: str) -> list[dict]:
    return [s for s in airflow_statements(template) if action in as_list(s["Action"])]


def test_creation_time_checks_key_on_what_their_requests_carry(template: dict):
    """AddTags and PutAutoTerminationPolicy may be checked while RunJobFlow creates the cluster, which has no
    tags yet. AddTags carries the request's tags; PutAutoTerminationPolicy carries none (the Service
    Authorization Reference lists no aws:RequestTag key for it), so a condition on them never matches."""
    (add_tags,) = statements_allowing(template, "elasticmapreduce:AddTags")
    assert add_tags["Condition"] == {"StringEquals": {"aws:RequestTag/project": "fruits"}}
    (bound,) = statements_allowing(template, "elasticmapreduce:PutAutoTerminationPolicy")
    keys = {key for values in bound.get("Condition", {}).values() for key in values}
    assert not [key for key in keys if key.startswith("aws:RequestTag/")], bound
    # a cluster of another project stays out of reach; the new cluster (no tag yet) does not
    assert bound["Condition"] == {"StringEqualsIfExists": {"aws:ResourceTag/project": "fruits"}}


def test_cluster_mutations_need_the_project_tag(template: dict):
    mutating = {"elasticmapreduce:AddJobFlowSteps", "elasticmapreduce:TerminateJobFlows"}
    for statement in airflow_statements(template):
        if mutating & set(as_list(statement["Action"])):
            assert statement["Condition"]["StringEquals"]["aws:ResourceTag/project"] == "fruits"
    (run_job_flow,) = [
        s for s in airflow_statements(template) if "elasticmapreduce:RunJobFlow" in as_list(s["Action"])
    ]
    # every cluster the DAG starts carries the tag the statements above require
    assert run_job_flow["Condition"]["StringEquals"]["aws:RequestTag/project"] == "fruits"


def test_created_subnet_is_tagged_private_and_reaches_only_s3(template: dict):
    tag = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}
    assert tag in properties(template, "EmrSubnet")["Tags"]
    assert tag in properties(template, "Vpc")["Tags"]
    assert properties(template, "EmrSubnet")["MapPublicIpOnLaunch"] is False
    # nothing that leads out of the VPC: no internet or egress-only gateway, no NAT, no public address
    exits = {
        f"AWS::EC2::{kind}"
        for kind in ("InternetGateway", "EgressOnlyInternetGateway", "NatGateway", "EIP",
                     "VPCGatewayAttachment", "TransitGatewayAttachment")
    }  # fmt: skip
    assert not [name for name, r in template["Resources"].items() if r["Type"] in exits]
    routes = resources_of_type(template, "AWS::EC2::Route")
    assert not routes, f"the subnet's routes are the VPC's own and the S3 endpoint's only: {sorted(routes)}"
    association = properties(template, "EmrSubnetRouteTable")
    assert association == {"SubnetId": {"Ref": "EmrSubnet"}, "RouteTableId": {"Ref": "PrivateRouteTable"}}
    endpoint = properties(template, "S3GatewayEndpoint")
    assert endpoint["VpcEndpointType"] == "Gateway"
    assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"}
    assert endpoint["RouteTableIds"] == [{"Ref": "PrivateRouteTable"}]
    assert template["Outputs"]["EmrSubnetId"]["Value"] == {"Ref": "EmrSubnet"}


def test_instance_profile_wraps_the_node_role(template: dict):
    (profile,) = resources_of_type(template, "AWS::IAM::InstanceProfile").values()
    assert profile["Properties"]["Roles"] == [{"Ref": "EmrNodeRole"}]
    trust = statements_of(properties(template, "EmrNodeRole")["AssumeRolePolicyDocument"])
    assert [s["Principal"] for s in trust] == [{"Service": "ec2.amazonaws.com"}]


def test_service_role_is_emr_v2_and_may_pass_only_the_node_role(template: dict):
    role = properties(template, "EmrServiceRole")
    trust = statements_of(role["AssumeRolePolicyDocument"])
    assert [s["Principal"] for s in trust] == [{"Service": "elasticmapreduce.amazonaws.com"}]
    assert "aws:SourceAccount" in trust[0]["Condition"]["StringEquals"]
    assert any(
        "AmazonEMRServicePolicy_v2" in str(arn.get("Fn::Sub", arn)) for arn in role["ManagedPolicyArns"]
    )
    pass_role = [
        s
        for p in role["Policies"]
        for s in statements_of(p["PolicyDocument"])
        if "iam:PassRole" in as_list(s["Action"])
    ]
    assert [s["Resource"] for s in pass_role] == [{"Fn::GetAtt": ["EmrNodeRole", "Arn"]}]


def test_airflow_policy_covers_the_emr_dag(template: dict):
    statements = airflow_statements(template)
    actions = {action for s in statements if s["Effect"] == "Allow" for action in as_list(s["Action"])}
    assert actions >= AIRFLOW_EMR_ACTIONS
    # the DAG's pre-flight checks read the bucket's Region and default encryption, and the subnet
    assert {"ec2:DescribeSubnets", "ec2:DescribeVpcs", "ec2:DescribeRouteTables"} <= actions
    assert {"s3:GetBucketLocation", "s3:GetEncryptionConfiguration"} <= actions
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject"} <= actions
    assert not [a for a in actions if a.endswith("*")], "no wildcard actions"


def test_airflow_policy_passes_only_the_two_emr_roles(template: dict):
    passed = [
        resource
        for s in airflow_statements(template)
        if "iam:PassRole" in as_list(s["Action"])
        for resource in as_list(s["Resource"])
    ]
    assert sorted(r["Fn::GetAtt"][0] for r in passed) == ["EmrNodeRole", "EmrServiceRole"]


def test_airflow_policy_limits_s3_to_the_bucket(template: dict):
    for statement in airflow_statements(template):
        actions = as_list(statement["Action"])
        if any(action.startswith("s3:") for action in actions):
            assert all(action.startswith("s3:") for action in actions)
            for resource in as_list(statement["Resource"]):
                assert is_bucket_or_its_objects(resource), f"{actions} on {resource}"


def test_run_job_flow_requires_the_emr_managed_policies_tag(template: dict):
    (run_job_flow,) = [
        s for s in airflow_statements(template) if "elasticmapreduce:RunJobFlow" in as_list(s["Action"])
    ]
    condition = run_job_flow["Condition"]["StringEquals"]
    assert condition["aws:RequestTag/for-use-with-amazon-emr-managed-policies"] == "true"


def test_outputs_name_what_the_dag_needs(template: dict):
    assert set(template["Outputs"]) >= {
        "BucketName",
        "EmrServiceRoleName",
        "EmrInstanceProfileName",
        "EmrNodeRoleName",
        "AirflowPolicyArn",
    }


def test_airflow_may_only_publish_to_the_alerts_topic(template: dict):
    (topic,) = resources_of_type(template, "AWS::SNS::Topic")
    sns = [s for s in airflow_statements(template) if any(a.startswith("sns:") for a in as_list(s["Action"]))]
    assert [(s["Effect"], as_list(s["Action"]), s["Resource"]) for s in sns] == [
        ("Allow", ["sns:Publish"], {"Ref": topic})
    ]
    # the stack hands the ARN over as the Variable the DAG reads
    assert template["Outputs"]["AlertsTopicArn"]["Value"] == {"Ref": topic}


AWS_MD = PROJECT_ROOT / "docs" / "AWS.md"


def runbook_simulations() -> list[tuple[set[str], set[str]]]:
    """(action names, context key names) of each `aws iam simulate-principal-policy` of docs/AWS.md."""
    text = re.sub(r"\\\n\s*", " ", AWS_MD.read_text())  # one line per command
    found = []
    for command in re.findall(r"aws iam simulate-principal-policy[^\n]*", text):
        actions = re.search(r"--action-names ((?:[a-z0-9-]+:[A-Za-z]+ *)+)", command)
        keys = set(re.findall(r"ContextKeyName=([^,\s]+)", command))
        found.append((set(actions.group(1).split()) if actions else set(), keys))
    return found


def test_the_runbook_simulates_every_conditional_allow_with_its_context(template: dict):
    """IAM's simulator answers implicitDeny for an allow whose condition keys get no value: the checklist's
    simulations must give every key of every conditional statement of the Airflow policy."""
    simulations = runbook_simulations()
    assert simulations, "docs/AWS.md no longer checks the Airflow identity's policy"
    for statement in airflow_statements(template):
        keys = {key for values in statement.get("Condition", {}).values() for key in values}
        for action in as_list(statement["Action"]) if keys else ():
            assert any(action in actions and keys <= given for actions, given in simulations), (
                f"no simulation of {action} gives {sorted(keys)} (statement {statement.get('Sid')})"
            )
