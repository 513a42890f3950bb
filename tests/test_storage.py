"""The Hadoop listing that accounts for every input file: one JVM round trip, parsed, checked by a walk."""

from __future__ import annotations

import os

from fruits_spark import storage

# names a phone, a user or a sync tool really produce, and one that imitates the listing's own separators
AWKWARD_NAMES = (
    "apple/IMG 0001.JPG",
    "apple/été; photo, 2.jpg",
    "apple/x; isDirectory=false; length=5; y.jpg",
    "banana/.DS_Store",
    "banana/_partial.jpg",
    "banana/empty.png",
    "deep/a/b/c/d.jpeg",
    "top.jpg",
)


def test_the_listing_names_every_file_with_its_length(spark, tmp_path):
    for i, name in enumerate(AWKWARD_NAMES):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x" * (0 if name.endswith("empty.png") else 100 + i))
    walked = {
        os.path.join(folder, name): os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(tmp_path)
        for name in names
    }

    listed = storage.list_files(spark, str(tmp_path))

    assert {item.uri.removeprefix("file:"): item.length for item in listed} == walked
    assert len(listed) == len(AWKWARD_NAMES)


class _Statuses:
    """What the JVM hands over, for a FileStatus class whose toString is its own."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def mkString(self, separator: str) -> str:  # noqa: N802 (the JVM method's name)
        return separator.join(self.texts)

    def size(self) -> int:
        return len(self.texts)


def test_a_listing_that_does_not_parse_is_asked_file_by_file():
    parsed = "FileStatus{path=s3://b/a.jpg; isDirectory=false; length=12; replication=1}"
    assert storage._listed_in_bulk(_Statuses([parsed])) == [storage.ListedFile("s3://b/a.jpg", 12)]
    assert storage._listed_in_bulk(_Statuses([parsed, "EmrFileStatus[s3://b/c.jpg, 7]"])) is None
    # a separator inside a name would split one status in two: the count no longer matches
    assert storage._listed_in_bulk(_Statuses([parsed.replace("a.jpg", "a\u0000.jpg")])) is None
