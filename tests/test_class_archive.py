"""The local driver's class archive: written once per machine under a name of its own, mapped afterwards
(a real JVM writing and mapping one: test_run_local's CLI runs)."""

from __future__ import annotations

import pytest

from fruits_platform.local.class_archive import archive_path, class_archive
from fruits_spark import contract


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(contract.CACHE_ENV, str(tmp_path))
    return tmp_path


def written_to(flags: list[str]) -> str:
    prefix = "-XX:ArchiveClassesAtExit="
    [flag] = [flag for flag in flags if flag.startswith(prefix)]
    return flag.removeprefix(prefix)


def test_the_first_run_writes_the_archive_aside_and_the_next_maps_it(cache):
    final = archive_path()
    assert final.is_relative_to(cache)
    with class_archive() as first:
        scratch = written_to(first)
        assert scratch != str(final)
        # what the JVM does at its exit
        with open(scratch, "wb") as archive:
            archive.write(b"classes")
        assert not final.exists()
    assert final.read_bytes() == b"classes"
    with class_archive() as second:
        assert second == [f"-XX:SharedArchiveFile={final}"]


def test_a_run_interrupted_before_its_jvm_ended_leaves_no_archive_and_no_scratch(cache):
    def interrupted():
        with class_archive() as first:
            with open(written_to(first), "wb") as archive:
                archive.write(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert not archive_path().exists()
    assert list(archive_path().parent.iterdir()) == []


def test_a_jvm_that_wrote_nothing_publishes_nothing(cache):
    with class_archive():
        pass
    assert not archive_path().exists()


def test_another_java_gets_its_own_archive(cache, tmp_path, monkeypatch):
    mine = archive_path()
    other_home = tmp_path / "other-jdk"
    (other_home / "bin").mkdir(parents=True)
    (other_home / "bin" / "java").touch()
    monkeypatch.setenv("JAVA_HOME", str(other_home))
    assert archive_path() != mine
    assert archive_path().parent == mine.parent
