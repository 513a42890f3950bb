"""The GDPR placement guard of the EMR run (and of ``fruits upload``): an EU region, a bucket in it with
default encryption, and a subnet EMR can launch in that reaches PyPI, all checked before anything is created.

Pure decisions over facts fetched with the boto3 clients the caller passes; no Airflow import. A refusal is
a one-line ``GuardRefused``.
"""

from __future__ import annotations

import re

from botocore.exceptions import BotoCoreError, ClientError

from fruits_platform.aws.refusal import GuardRefused

# Regions in EU member states (GDPR): the bucket, the cluster and the outputs must all be in one.
# London (eu-west-2) and Zurich (eu-central-2) are outside the EU: refused, as infra/ refuses them.
EU_REGIONS: frozenset[str] = frozenset(
    {"eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2"}
)
# S3's bucket naming rule (lower case, digits, dots, hyphens; 3-63 characters): the DAG's bucket Param, the
# settings and `fruits upload` all check this one pattern
BUCKET_NAME_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
BUCKET_NAME = re.compile(BUCKET_NAME_PATTERN)


def check_bucket_name(bucket: str, what: str = "bucket") -> str:
    if not BUCKET_NAME.match(bucket):
        raise GuardRefused(f"{what} {bucket!r} is not a valid S3 bucket name")
    return bucket


def require_bucket(bucket: str | None) -> str:
    bucket = (bucket or "").strip()
    if not bucket:
        raise GuardRefused("param bucket is required (or set the Airflow Variable fruits_bucket)")
    return check_bucket_name(bucket, "param bucket")


def check_region(region: str) -> str:
    if region not in EU_REGIONS:
        raise GuardRefused(
            f"GDPR: region {region} is not in the EU allow-list ({', '.join(sorted(EU_REGIONS))})"
        )
    return region


def bucket_region(location_constraint: str | None) -> str:
    """The region of a bucket from ``get_bucket_location``'s LocationConstraint (legacy values included)."""
    if not location_constraint:
        return "us-east-1"
    return {"EU": "eu-west-1"}.get(location_constraint, location_constraint)


def check_bucket_region(
    bucket: str, location_constraint: str | None, region: str, whose: str = "the run's region"
) -> None:
    actual = bucket_region(location_constraint)
    if actual != region:
        raise GuardRefused(f"GDPR: bucket {bucket} is in {actual}, not in {whose} {region}")


def check_default_encryption(bucket: str, rules: list[dict]) -> str:
    """The bucket's default encryption algorithm: it is what encrypts the Spark outputs at rest."""
    for rule in rules:
        algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
        if algorithm in ("AES256", "aws:kms", "aws:kms:dsse"):
            return algorithm
    raise GuardRefused(f"GDPR: bucket {bucket} has no default server-side encryption")


# -- what must exist in the account before a cluster is paid for ------------------------------------------
# AmazonEMRServicePolicy_v2 launches instances only in subnets (and creates its managed security groups only
# in VPCs) carrying this tag: without it RunJobFlow succeeds and the cluster fails minutes later.
EMR_MANAGED_TAG = ("for-use-with-amazon-emr-managed-policies", "true")


def _tags(resource: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags") or []}


def internet_route(subnet: dict, route_tables: list[dict]) -> str | None:
    """How the subnet's instances reach PyPI (the bootstrap pip-installs from it), or None.

    ``route_tables``: the subnet's explicitly associated route table, else its VPC's main one (EC2's rule).
    A default route to a NAT gateway works for any subnet; one to an internet gateway only when instances
    get a public IPv4 address (MapPublicIpOnLaunch), which EMR relies on in a public subnet."""
    explicit = [
        table
        for table in route_tables
        if any(a.get("SubnetId") == subnet["SubnetId"] for a in table.get("Associations", []))
    ]
    main = [table for table in route_tables if any(a.get("Main") for a in table.get("Associations", []))]
    for table in explicit or main:
        for route in table.get("Routes", []):
            if route.get("DestinationCidrBlock") != "0.0.0.0/0" or route.get("State", "active") != "active":
                continue
            if route.get("NatGatewayId"):
                return f"NAT gateway {route['NatGatewayId']} ({table['RouteTableId']})"
            gateway = route.get("GatewayId") or ""
            if gateway.startswith("igw-") and subnet.get("MapPublicIpOnLaunch"):
                return f"internet gateway {gateway} with public IPs ({table['RouteTableId']})"
    return None


def check_subnet(subnet: dict, vpc: dict, route_tables: list[dict], region: str, variable: str) -> str:
    """The cluster's subnet is usable by EMR's v2 managed policy and reaches the internet; returns how."""
    subnet_id = subnet["SubnetId"]
    key, value = EMR_MANAGED_TAG
    untagged = [
        f"{kind} {resource_id}"
        for kind, resource_id, resource in (("subnet", subnet_id, subnet), ("VPC", vpc.get("VpcId"), vpc))
        if _tags(resource).get(key) != value
    ]
    if untagged:
        raise GuardRefused(
            f"{' and '.join(untagged)} (Variable {variable}, {region}) lack the tag {key}={value}: "
            "AmazonEMRServicePolicy_v2 would not launch the cluster's instances there (aws ec2 create-tags "
            f"--resources {subnet_id} {vpc.get('VpcId')} --tags Key={key},Value={value})"
        )
    route = internet_route(subnet, route_tables)
    if route is None:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {variable}) has no route to the internet (a 0.0.0.0/0 route to a "
            "NAT gateway, or to an internet gateway with MapPublicIpOnLaunch): the bootstrap cannot pip "
            "install from PyPI"
        )
    return route


def encryption_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ServerSideEncryptionConfigurationNotFoundError":
            return []
        raise


def subnet_facts(ec2, subnet_id: str) -> tuple[dict, dict, list[dict]]:
    """(subnet, its VPC, the route tables that decide its routes) for ``check_subnet``: the subnet's
    own association if it has one, else its VPC's main route table."""
    subnet = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
    vpc = ec2.describe_vpcs(VpcIds=[subnet["VpcId"]])["Vpcs"][0]
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])[
        "RouteTables"
    ]
    if not tables:
        tables = ec2.describe_route_tables(
            Filters=[
                {"Name": "vpc-id", "Values": [subnet["VpcId"]]},
                {"Name": "association.main", "Values": ["true"]},
            ]
        )["RouteTables"]
    return subnet, vpc, tables


def check_gdpr(s3, ec2, bucket: str, region: str, subnet_id: str, subnet_variable: str) -> tuple[str, str]:
    """Every check of a run's placement, before anything is created: EU region, bucket in it and encrypted,
    subnet usable by EMR. Returns (the bucket's encryption algorithm, how the subnet reaches PyPI)."""
    check_region(region)
    try:
        location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except (ClientError, BotoCoreError) as error:
        raise GuardRefused(f"bucket {bucket} is not readable: {error}") from None
    check_bucket_region(bucket, location, region)
    try:
        rules = encryption_rules(s3, bucket)
    except (ClientError, BotoCoreError) as error:
        raise GuardRefused(
            f"GDPR: cannot check the default encryption of bucket {bucket} "
            f"(s3:GetEncryptionConfiguration): {error}"
        ) from None
    algorithm = check_default_encryption(bucket, rules)
    try:
        subnet, vpc, route_tables = subnet_facts(ec2, subnet_id)
    except (ClientError, BotoCoreError, IndexError) as error:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {subnet_variable}) not usable in {region}: {error}"
        ) from None
    return algorithm, check_subnet(subnet, vpc, route_tables, region, subnet_variable)
