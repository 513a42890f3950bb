"""The datasets' one declaration (fruits_spark.schemas) against what a real run writes, the catalog tables of
infra/fruits-infra.yaml, moto's Glue and the README's Outputs table; the day a run accepts."""

from __future__ import annotations

import csv
import datetime as dt
import re
import shutil
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cfnlint.decode import decode_str
from moto import mock_aws

from fruits_platform.pipeline import PipelineParams
from fruits_spark import contract, schemas
from fruits_spark.pca import CSV_NAME
from tests.inprocess import run_pipeline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT_ROOT / "infra" / "fruits-infra.yaml"
README = PROJECT_ROOT / "README.md"
AWS_MD = PROJECT_ROOT / "docs" / "AWS.md"
DAY = "2026-11-30"
K = 100
PROJECTION = {
    "projection.enabled": "true",
    "projection.dt.type": "date",
    "projection.dt.format": "yyyy-MM-dd",
    "projection.dt.interval": "1",
    "projection.dt.interval.unit": "DAYS",
}
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"


def test_every_dataset_of_the_contract_is_declared():
    assert set(schemas.SCHEMAS) | set(schemas.NOT_PARQUET) == set(contract.DATASETS)
    assert set(schemas.CATALOG_TABLES) <= set(schemas.SCHEMAS)
    for dataset, columns in schemas.SCHEMAS.items():
        names = [c.name for c in columns]
        assert len(set(names)) == len(names), dataset
        assert schemas.PARTITION not in names, f"{dataset}: dt is the folder, not a column"


# --- a real run's Parquet -----------------------------------------------------------------------------


def glue_type(arrow: pa.DataType) -> str:
    """The Glue/Hive name of an Arrow type, as Athena reads a Parquet column of it."""
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        return f"array<{glue_type(arrow.value_type)}>"
    simple = {
        pa.string(): "string",
        pa.large_string(): "string",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float32(): "float",
        pa.float64(): "double",
        pa.binary(): "binary",
        pa.large_binary(): "binary",
        pa.bool_(): "boolean",
    }
    return simple[arrow]


def written_columns(folder: Path) -> list[tuple[str, str]]:
    (part, *_) = sorted(folder.glob("part-*.parquet"))
    return [(field.name, glue_type(field.type)) for field in pq.read_schema(part)]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, sample_dir, random_weights, spark):
    """A small day (3 labels of 3 photos, a broken photo, a note) with the demo's k=100: every dataset
    written, the quality checks' thresholds low enough for random weights to flag something."""
    root = tmp_path_factory.mktemp("catalog")
    source = root / "in"
    for label in ("apple", "lemon", "mango"):
        (source / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:3]:
            shutil.copyfile(path, source / label / path.name)
    (source / "apple" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (source / "notes.txt").write_text("not an image")
    output = root / "out"
    params = PipelineParams(
        str(source),
        str(output),
        DAY,
        weights=str(random_weights),
        k=K,
        near_duplicate_similarity=900,
        label_margin=1,
    )
    code, printed = run_pipeline(params)
    assert code == 0, printed[-3000:]
    return output, printed


@pytest.mark.slow
def test_a_real_runs_parquet_has_the_declared_columns_and_types(real_run):
    output, _ = real_run
    for dataset, columns in schemas.SCHEMAS.items():
        folder = output / dataset / f"dt={DAY}"
        if dataset == "rejected":
            folder = folder / "stage=ingest"
        expected = [(c.name, c.type) for c in columns]
        assert written_columns(folder) == expected, dataset


@pytest.mark.slow
def test_pca_keeps_only_the_components_with_variance_and_says_so(real_run):
    """9 photos have rank 8 around their mean: k=100 used to give 92 columns of zeros."""
    output, printed = real_run
    rows = pq.read_table(output / "pca" / f"dt={DAY}").to_pylist()
    (kept,) = {len(row["pca"]) for row in rows}
    assert 1 <= kept < K
    # the last component kept is a real one, not a column of zeros
    assert any(abs(row["pca"][-1]) > 1e-6 for row in rows)
    assert f"pca: only {kept} of the k={K} components carry variance" in printed
    report = (output / "reports" / f"dt={DAY}" / "report.json").read_text()
    assert f'"components": {kept}' in report
    assert f"k = {K} ({kept} carry variance and are written)" in (output / "report.html").read_text()
    # the CSV: one file with a stable name, the same components
    folder = output / "pca_csv" / f"dt={DAY}"
    assert [f.name for f in folder.iterdir() if not f.name.startswith(".")] == [CSV_NAME]
    with (folder / CSV_NAME).open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["path", "label", *(f"pc_{i}" for i in range(1, kept + 1))]
    assert len(table) - 1 == len(rows)


# --- the README's Outputs table -----------------------------------------------------------------------


def readme_outputs() -> dict[str, list[tuple[str, str]]]:
    """dataset -> [(column, type)] of the README's Outputs rows (`name` type, ...)."""
    text = README.read_text()
    table = text[text.index("**Outputs**") :].split("\n\n")[1]
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)/dt=…/(?:stage=…/)?`", cells[0])
        if match:
            found[match.group(1)] = re.findall(r"`(\w+)` ((?:array<\w+>)|\w+)", cells[1])
    return found


def test_the_readme_outputs_table_is_the_declaration():
    documented = readme_outputs()
    for dataset, columns in schemas.SCHEMAS.items():
        assert documented.get(dataset) == [(c.name, c.type) for c in columns], dataset
    assert "`pca_csv/dt=…/pca.csv`" in README.read_text()
    assert "pca_model_version" in str(documented["pca"])


# --- the template's tables ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict:
    decoded, errors = decode_str(TEMPLATE.read_text())
    assert not errors, [str(error) for error in errors]
    return decoded


def tables_of(template: dict) -> dict[str, dict]:
    return {
        r["Properties"]["TableInput"]["Name"]: r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Glue::Table"
    }


def template_block(dataset: str) -> str:
    """What the template's Columns of ``dataset`` must read: printed when they differ, to paste."""
    indent = " " * 14
    return "\n".join(
        f'{indent[2:]}- Name: {c["Name"]}\n{indent}Type: {c["Type"]}\n{indent}Comment: "{c["Comment"]}"'
        for c in schemas.glue_columns(dataset)
    )


def test_the_template_declares_one_table_per_catalog_dataset(template: dict):
    (database,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Glue::Database"]
    assert database["Properties"]["DatabaseInput"]["Name"] == {"Ref": "CatalogDatabaseName"}
    assert template["Parameters"]["CatalogDatabaseName"]["Default"] == schemas.CATALOG_DATABASE
    tables = tables_of(template)
    assert sorted(tables) == sorted(schemas.CATALOG_TABLES)
    for name, table in tables.items():
        assert table["DatabaseName"] == {"Ref": "CatalogDatabase"}
        assert table["CatalogId"] == {"Ref": "AWS::AccountId"}
        columns = table["TableInput"]["StorageDescriptor"]["Columns"]
        assert columns == schemas.glue_columns(name), f"{name}: the template's Columns must be\n" + (
            template_block(name)
        )


def test_the_tables_project_their_dt_partitions_under_the_output_prefix(template: dict):
    for name, table in tables_of(template).items():
        given = table["TableInput"]
        assert given["TableType"] == "EXTERNAL_TABLE"
        assert given["PartitionKeys"] == [
            {"Name": "dt", "Type": "string", "Comment": "upload day, YYYY-MM-DD"}
        ]
        parameters = given["Parameters"]
        assert {key: parameters[key] for key in PROJECTION} == PROJECTION, name
        # the last day a run accepts is tomorrow (contract.check_run_date)
        assert contract.LATEST_DAY_AHEAD == 1
        assert parameters["projection.dt.range"] == {"Fn::Sub": "${CatalogFirstDay},NOW+1DAYS"}
        # ${!dt}: Fn::Sub leaves ${dt} for Athena to fill with each projected day
        assert parameters["storage.location.template"] == {
            "Fn::Sub": f"s3://${{DataBucket}}/${{OutputPrefix}}{name}/dt=${{!dt}}/"
        }
        storage = given["StorageDescriptor"]
        assert storage["Location"] == {"Fn::Sub": f"s3://${{DataBucket}}/${{OutputPrefix}}{name}/"}
        assert storage["SerdeInfo"]["SerializationLibrary"] == PARQUET_SERDE
        assert storage["InputFormat"].endswith("MapredParquetInputFormat")


def test_the_node_role_reads_only_the_catalogs_database_and_tables(template: dict):
    statements = [
        statement
        for policy in template["Resources"]["EmrNodeRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if any(action.startswith("glue:") for action in statement["Action"])
    ]
    prefix = "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:"
    allowed = {
        f"{prefix}catalog",
        f"{prefix}database/${{CatalogDatabase}}",
        f"{prefix}table/${{CatalogDatabase}}/*",
        f"{prefix}database/default",
    }
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            assert resource["Fn::Sub"] in allowed, resource
        writes = [a for a in statement["Action"] if not a.startswith(("glue:Get", "glue:BatchGet"))]
        if writes:
            # Spark creates its "default" database where the account has none: that one only
            assert writes == ["glue:CreateDatabase"]
            assert [r["Fn::Sub"] for r in statement["Resource"]] == [
                f"{prefix}catalog",
                f"{prefix}database/default",
            ]
    granted = {action for statement in statements for action in statement["Action"]}
    assert {"glue:GetDatabase", "glue:GetTable", "glue:GetPartitions"} <= granted


def resolve(value, names: dict[str, str]):
    """The template's values for one deployment: Fn::Sub and Ref resolved from ``names``."""
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        text = re.sub(r"\$\{(\w+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])
        return text.replace("${!", "${")
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return names[value["Ref"]]
    if isinstance(value, dict):
        return {key: resolve(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, names) for item in value]
    return value


def test_moto_glue_takes_the_templates_tables_and_reads_them_back(template: dict):
    """moto's CloudFormation does not deploy AWS::Glue resources, its Glue API does: the template's own
    TableInputs, resolved for one deployment, go through create_table and come back from get_table."""
    parameters = template["Parameters"]
    names = {
        "DataBucket": "fruits-test-bucket",
        "OutputPrefix": parameters["OutputPrefix"]["Default"],
        "CatalogFirstDay": parameters["CatalogFirstDay"]["Default"],
        "CatalogDatabase": schemas.CATALOG_DATABASE,
        "CatalogDatabaseName": schemas.CATALOG_DATABASE,
    }
    (database,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Glue::Database"]
    with mock_aws():
        glue = boto3.client("glue", region_name="eu-west-3")
        glue.create_database(DatabaseInput=resolve(database["Properties"]["DatabaseInput"], names))
        for table in tables_of(template).values():
            glue.create_table(
                DatabaseName=schemas.CATALOG_DATABASE, TableInput=resolve(table["TableInput"], names)
            )
        stored = {t["Name"]: t for t in glue.get_tables(DatabaseName=schemas.CATALOG_DATABASE)["TableList"]}
        assert sorted(stored) == sorted(schemas.CATALOG_TABLES)
        features = glue.get_table(DatabaseName=schemas.CATALOG_DATABASE, Name="features")["Table"]
    assert features["StorageDescriptor"]["Columns"] == schemas.glue_columns("features")
    assert features["PartitionKeys"][0]["Name"] == "dt"
    template_location = features["Parameters"]["storage.location.template"]
    assert template_location == "s3://fruits-test-bucket/outputs/features/dt=${dt}/"
    assert features["Parameters"]["projection.dt.range"] == "2020-01-01,NOW+1DAYS"


def test_the_aws_docs_query_the_tables_the_template_creates():
    text = AWS_MD.read_text()
    db = schemas.CATALOG_DATABASE
    assert re.search(rf"FROM {db}\.features\s+WHERE dt = '\d{{4}}-\d{{2}}-\d{{2}}'", text)
    # the call as ruff formats it in the docs: its arguments may wrap
    call = rf"wr\.athena\.read_sql_query\(.*?FROM features WHERE dt.*?database=\"{db}\""
    assert re.search(call, text, re.S)
    assert f'spark.table("{db}.features")' in text
    # the README's local line reads the same day's files
    assert "duckdb" in README.read_text()


# --- the day a run accepts ----------------------------------------------------------------------------


def test_a_day_after_tomorrow_is_refused_with_a_clear_message():
    dt_param = contract.PARAMS["dt"]
    with pytest.raises(ValueError, match=r"dt must be an upload day no later than .* \(tomorrow, UTC\)"):
        dt_param.validate("2099-01-01")
    today = dt.datetime.now(dt.UTC).date()
    assert dt_param.validate((today + dt.timedelta(days=1)).isoformat())
    with pytest.raises(ValueError, match="no later than"):
        dt_param.validate((today + dt.timedelta(days=2)).isoformat())
    # a format error still says so first
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        dt_param.validate("2099-13-01")


def test_the_emr_dags_days_are_accepted():
    """A scheduled run processes the day before its own, a manual one its logical date's UTC day: both
    are at most today, and a backfill's are older."""
    from fruits_platform.run_date import upload_day

    now = dt.datetime.now(dt.UTC)
    for run_type, start in (("scheduled", now - dt.timedelta(days=1)), ("manual", None), ("backfill", now)):
        day = upload_day(run_type, start, now, now)
        assert contract.PARAMS["dt"].validate(day) == day
    assert contract.PARAMS["dt"].validate("2020-01-01") == "2020-01-01"
