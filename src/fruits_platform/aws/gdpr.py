"""The GDPR placement guard of the EMR run (and of ``fruits upload``): an EU region, a bucket in it with
default encryption, and a subnet EMR can launch in with no way to the internet and an S3 gateway endpoint,
all checked before anything is created.

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


def effective_route_tables(subnet: dict, route_tables: list[dict]) -> list[dict]:
    """The route tables that decide the subnet's routes: its own association, else its VPC's main table."""
    explicit = [
        table
        for table in route_tables
        if any(a.get("SubnetId") == subnet["SubnetId"] for a in table.get("Associations", []))
    ]
    main = [table for table in route_tables if any(a.get("Main") for a in table.get("Associations", []))]
    return explicit or main


# a route's target that leaves the VPC: the key EC2 reports it under
_EXIT_TARGETS = (
    "GatewayId",  # igw-: an internet gateway (vgw-: a VPN, local/vpce-: never a default route)
    "NatGatewayId",
    "EgressOnlyInternetGatewayId",
    "TransitGatewayId",
    "InstanceId",  # a NAT instance
    "NetworkInterfaceId",
    "VpcPeeringConnectionId",
)


def internet_routes(route_tables: list[dict]) -> list[str]:
    """The active default routes (IPv4 0.0.0.0/0, IPv6 ::/0) of these tables, each named by its target: a
    subnet with one can reach the internet (or another network that can)."""
    found = []
    for table in route_tables:
        for route in table.get("Routes", []):
            destination = route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock")
            if destination not in ("0.0.0.0/0", "::/0") or route.get("State", "active") != "active":
                continue
            target = next((route[key] for key in _EXIT_TARGETS if route.get(key)), "an unknown target")
            found.append(f"{destination} -> {target} ({table['RouteTableId']})")
    return found


def s3_gateway_endpoint(route_tables: list[dict]) -> str | None:
    """The gateway endpoint (vpce-) the subnet reaches S3 through: a route to a prefix list via vpce-."""
    for table in route_tables:
        for route in table.get("Routes", []):
            gateway = route.get("GatewayId") or ""
            active = route.get("State", "active") == "active"
            if route.get("DestinationPrefixListId") and gateway.startswith("vpce-") and active:
                return f"{gateway} ({table['RouteTableId']})"
    return None


def check_subnet(subnet: dict, vpc: dict, route_tables: list[dict], region: str, variable: str) -> str:
    """The cluster's subnet is usable by EMR's v2 managed policy, has no way to the internet (the nodes
    process personal data and install from the staged wheelhouse) and reaches S3 through a gateway
    endpoint; returns the endpoint."""
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
    tables = effective_route_tables(subnet, route_tables)
    exits = internet_routes(tables)
    if exits:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {variable}) reaches the internet ({'; '.join(exits)}): the nodes "
            "process users' photos and need nothing outside S3; use a private subnet (the stack's "
            "EmrSubnetId, docs/AWS.md 'Nodes without internet')"
        )
    if subnet.get("MapPublicIpOnLaunch"):
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {variable}) gives its instances public IPv4 addresses "
            "(MapPublicIpOnLaunch): billed per node-hour and needless in a private subnet "
            f"(aws ec2 modify-subnet-attribute --subnet-id {subnet_id} --no-map-public-ip-on-launch)"
        )
    endpoint = s3_gateway_endpoint(tables)
    if endpoint is None:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {variable}) has no route to an S3 gateway endpoint: without "
            "internet, the bootstrap could not copy the wheelhouse nor Spark read the images (add one: "
            "aws ec2 create-vpc-endpoint --vpc-endpoint-type Gateway --service-name "
            f"com.amazonaws.{region}.s3 --vpc-id {vpc.get('VpcId')} --route-table-ids <its route table>)"
        )
    return endpoint


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
    subnet usable by EMR, private, reaching S3. Returns (the bucket's encryption, the S3 endpoint)."""
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
