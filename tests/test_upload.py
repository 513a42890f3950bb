"""``fruits upload`` against moto S3: layout, SSE, resumable (skips what is there), re-uploads changes."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from fruits_platform.aws.upload import Progress, UploadResult, plan_upload, upload_folder
from fruits_platform.cli import main

REGION = "eu-west-3"
BUCKET = "fruits-uploads-test"
PREFIX = "uploads/dt=2026-11-05/"


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


@pytest.fixture
def source(tmp_path, sample_dir) -> Path:
    """Two labels of two real images each, one unlabelled image, a hidden file and a note."""
    folder = tmp_path / "photos"
    for label in ("apple", "lemon"):
        (folder / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:2]:
            shutil.copyfile(path, folder / label / path.name)
    shutil.copyfile(next((sample_dir / "mango").glob("*.jpg")), folder / "loose.jpg")
    (folder / "apple" / ".DS_Store").write_bytes(b"\0")
    (folder / "notes.txt").write_text("not an image")
    return folder


def objects(s3, prefix: str = PREFIX) -> dict[str, dict]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.head_object(Bucket=BUCKET, Key=item["Key"])
    return found


def test_upload_lays_out_labels_with_sse(s3, source):
    result = upload_folder(s3, source, BUCKET, PREFIX, workers=4)

    assert (result.uploaded, result.skipped, result.failed, result.ignored) == (5, 0, 0, 2)
    stored = objects(s3)
    labels = sorted({key.removeprefix(PREFIX).split("/")[0] for key in stored})
    assert labels == ["apple", "lemon", "unlabelled"]
    assert f"{PREFIX}unlabelled/loose.jpg" in stored
    assert all(head["ServerSideEncryption"] == "AES256" for head in stored.values())
    assert all(len(head["Metadata"]["sha256"]) == 64 for head in stored.values())


def test_second_run_skips_everything_and_a_change_is_reuploaded(s3, source):
    upload_folder(s3, source, BUCKET, PREFIX)
    before = {key: head["ETag"] for key, head in objects(s3).items()}

    again = upload_folder(s3, source, BUCKET, PREFIX)
    assert (again.uploaded, again.skipped, again.failed) == (0, 5, 0)
    assert {key: head["ETag"] for key, head in objects(s3).items()} == before

    changed = next((source / "lemon").glob("*.jpg"))
    changed.write_bytes(changed.read_bytes()[:-1] + b"\x00")  # same size, other content
    third = upload_folder(s3, source, BUCKET, PREFIX)
    assert (third.uploaded, third.skipped) == (1, 4)
    key = f"{PREFIX}lemon/{changed.name}"
    after = objects(s3)
    assert after[key]["ETag"] != before[key]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == changed.read_bytes()


def test_plan_keys_and_ignored_files(source):
    planned, ignored = plan_upload(source, "initial")
    keys = [key for _, key in planned]
    assert ignored == 2
    assert all(key.startswith("initial/") for key in keys)
    assert "initial/unlabelled/loose.jpg" in keys


def test_upload_skips_what_ingest_skips(tmp_path):
    """One rule with the Spark side (Hadoop's): a component starting with '.' or '_' is hidden, so an upload
    never sends a file that ingest would not even list."""
    for relative in ("a/x.jpg", "a/_partial.jpg", "_tmp/y.jpg", "a/.z.jpg", "a/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    planned, ignored = plan_upload(tmp_path, "p/")
    assert [key for _, key in planned] == ["p/a/x.jpg"]
    assert ignored == 4


def test_progress_bar_counts_on_one_line():
    class Stream:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    stream = Stream()
    progress = Progress(2, stream=stream, width=10)
    progress.update(UploadResult(uploaded=1))
    progress.update(UploadResult(uploaded=1, skipped=1))
    assert stream.text.endswith("\r[##########] 2/2 uploaded 1 skipped 1 failed 0\n")


def test_cli_uploads_to_todays_prefix_and_prints_a_summary(s3, source, capsys):
    assert main(["upload", "--source", str(source), "--bucket", BUCKET, "--workers", "2"]) == 0

    out, err = capsys.readouterr()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert (
        f"uploaded 5, skipped 0 (already there), failed 0 of 5 images to s3://{BUCKET}/uploads/dt={today}/"
        in out
    )
    assert "5/5 uploaded 5" in err
    assert len(objects(s3, f"uploads/dt={today}/")) == 5


def test_cli_refuses_non_eu_region_and_a_bucket_elsewhere(s3, source, capsys):
    assert main(["upload", "--source", str(source), "--bucket", BUCKET, "--region", "us-east-1"]) == 2
    assert "GDPR: region us-east-1 is not in the EU allow-list" in capsys.readouterr().err

    boto3.client("s3", region_name="eu-central-1").create_bucket(
        Bucket="fruits-frankfurt", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    assert main(["upload", "--source", str(source), "--bucket", "fruits-frankfurt"]) == 2
    refusal = "GDPR: bucket fruits-frankfurt is in eu-central-1, not in --region eu-west-3"
    assert refusal in capsys.readouterr().err
    assert objects(s3, "") == {}
