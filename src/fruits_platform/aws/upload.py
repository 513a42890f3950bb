"""``fruits upload``: a local folder of labelled images to S3, where the EMR DAG reads them.

Layout: ``<prefix><label>/<file>`` with the default prefix ``uploads/dt=<today UTC>/`` (what the daily run
of the next night processes); images directly in the source folder go to ``<prefix>unlabelled/``. For the
initial dataset pick a prefix of your own (e.g. ``--prefix initial/``) and give it to the DAG as
``input``. Objects are written with SSE (AES256) and a sha256 in their metadata; an object already
there with the same size and sha256 is skipped, so an interrupted upload is simply run again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fruits_platform.aws.gdpr import check_bucket_name, check_bucket_region, check_region
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.settings import uploads_prefix
from fruits_platform.aws.staging import upload_if_changed
from fruits_spark.images import is_input_image

UNLABELLED = "unlabelled"
DEFAULT_REGION = "eu-west-3"


@dataclass
class UploadResult:
    uploaded: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.uploaded + self.skipped + self.failed


def plan_upload(source: Path, prefix: str) -> tuple[list[tuple[Path, str]], int]:
    """([(file, key)], ignored): the images below ``source`` and their keys; hidden (Hadoop's rule: a
    component starting with '.' or '_', which ingest would skip) and other files ignored."""
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    planned, ignored = [], 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source)
        if not is_input_image(relative.as_posix()):
            ignored += 1
            continue
        parts = relative.parts if len(relative.parts) > 1 else (UNLABELLED, *relative.parts)
        planned.append((path, prefix + "/".join(parts)))
    return planned, ignored


def check_destination(s3, bucket: str, region: str) -> None:
    """The EMR run's placement rules (``aws.gdpr``): EU region, valid bucket name, bucket in the region."""
    check_region(region)
    check_bucket_name(bucket)
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    check_bucket_region(bucket, location, region, whose="--region")


class Progress:
    """``[#####.....] 12/40 uploaded 10 skipped 2 failed 0`` on one stderr line."""

    def __init__(self, total: int, stream=None, width: int = 30) -> None:
        self.total, self.stream, self.width = total, stream or sys.stderr, width
        self._lock = threading.Lock()

    def update(self, result: UploadResult) -> None:
        with self._lock:
            done = result.total
            filled = self.width * done // self.total if self.total else self.width
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                f"uploaded {result.uploaded} skipped {result.skipped} failed {result.failed}"
            )
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def upload_folder(
    s3,
    source: Path,
    bucket: str,
    prefix: str,
    workers: int = 8,
    on_progress: Callable[[UploadResult], None] | None = None,
) -> UploadResult:
    planned, ignored = plan_upload(source, prefix)
    result = UploadResult(ignored=ignored)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(upload_if_changed, s3, bucket, key, path): key for path, key in planned}
        # results are counted here, in the calling thread: no lock needed
        for future in as_completed(futures):
            try:
                if future.result():
                    result.uploaded += 1
                else:
                    result.skipped += 1
            except Exception as error:
                result.failed += 1
                result.errors.append(f"{futures[future]}: {error}")
            if on_progress:
                on_progress(result)
    return result


def _run_upload(args: argparse.Namespace) -> int:
    import boto3

    source = Path(args.source).expanduser()
    if not source.is_dir():
        print(f"fruits upload: {source} is not a folder", file=sys.stderr)
        return 2
    prefix = (
        args.prefix if args.prefix is not None else uploads_prefix(dt.datetime.now(dt.UTC).date().isoformat())
    )
    try:
        check_region(args.region)  # before any client is built: nothing leaves for a non-EU region
        s3 = boto3.client("s3", region_name=args.region)
        check_destination(s3, args.bucket, args.region)
    except GuardRefused as refusal:
        print(f"fruits upload: refused: {refusal}", file=sys.stderr)
        return 2
    except Exception as error:  # credentials, missing bucket, access denied: one line, no traceback
        print(f"fruits upload: cannot use bucket {args.bucket}: {error}", file=sys.stderr)
        return 1
    planned, _ = plan_upload(source, prefix)
    progress = Progress(len(planned))
    result = upload_folder(s3, source, args.bucket, prefix, args.workers, progress.update)
    for error in result.errors[:10]:
        print(f"fruits upload: failed {error}", file=sys.stderr)
    print(
        f"uploaded {result.uploaded}, skipped {result.skipped} (already there), failed {result.failed} "
        f"of {result.total} images to s3://{args.bucket}/{prefix.lstrip('/')}"
        + (f"; ignored {result.ignored} non-image or hidden files" if result.ignored else "")
    )
    return 1 if result.failed else 0


def register(commands) -> None:
    upload = commands.add_parser(
        "upload",
        help="upload a folder of labelled images to S3 (SSE, resumable)",
        description="Uploads the images of --source (one sub-folder per label) to s3://BUCKET/PREFIX, "
        "encrypted, skipping what is there already: the EMR DAG's next run reads them.",
    )
    upload.add_argument("--source", required=True, help="folder of images, one sub-folder per label")
    upload.add_argument("--bucket", required=True, help="destination bucket (in --region)")
    upload.add_argument(
        "--prefix",
        default=None,
        help="key prefix; default uploads/dt=<today UTC>/ (the daily EMR run of the next night reads it)",
    )
    upload.add_argument(
        "--region", default=DEFAULT_REGION, help=f"EU region of the bucket (default {DEFAULT_REGION})"
    )
    upload.add_argument("--workers", type=int, default=8, help="parallel uploads (default 8)")
    upload.set_defaults(handler=_run_upload)
