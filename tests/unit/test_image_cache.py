"""The build cache: keys from inputs, atomic entries, pruning, symlink replacement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kata.errors import ImageError
from kata.image.cache import BuildCache, cache_key, hash_files, replace_symlink, write_result

INPUTS = {"kernel": "linux-image-6.1.0-56-cloud-amd64=6.1.192-2", "protobuf": "7.36.2",
          "kata_sources": "abc", "builder": "1:def", "deb:busybox-static": "1:1.35.0-4"}


def test_key_is_stable_and_order_independent() -> None:
    assert cache_key(INPUTS) == cache_key(dict(reversed(list(INPUTS.items()))))
    assert len(cache_key(INPUTS)) == 16


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_key_changes_when_any_input_changes(name: str) -> None:
    assert cache_key({**INPUTS, name: INPUTS[name] + "+1"}) != cache_key(INPUTS)


def test_key_changes_when_an_input_is_added() -> None:
    assert cache_key({**INPUTS, "compression": "gzip"}) != cache_key(INPUTS)


def test_hash_files_sees_content_and_names(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("x = 1\n")
    first = hash_files(tmp_path, [a])
    a.write_text("x = 2\n")
    assert hash_files(tmp_path, [a]) != first
    b = tmp_path / "b.py"
    b.write_text("x = 1\n")
    assert hash_files(tmp_path, [b]) != first  # same content, other name


def test_staging_becomes_the_entry_only_on_success(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    with store.locked(), store.staging("k1") as out:
        (out / "img").write_bytes(b"data")
        write_result(out, {"size": 4})
    assert store.lookup("k1") == {"size": 4}
    assert (store.entry("k1") / "img").read_bytes() == b"data"
    with pytest.raises(RuntimeError), store.staging("k2") as out:
        (out / "img").write_bytes(b"half")
        raise RuntimeError("build failed")
    assert store.lookup("k2") is None
    assert sorted(p.name for p in store.root.iterdir()) == [".lock", "k1"]


def test_staging_without_result_is_an_error(tmp_path: Path) -> None:
    store = BuildCache(tmp_path)
    with pytest.raises(ImageError, match=r"build\.json"), store.staging("k"):
        pass
    assert store.lookup("k") is None


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path) -> None:
    store = BuildCache(tmp_path)
    for age, key in enumerate(["new", "mid", "old", "older"]):
        (tmp_path / key).mkdir()
        os.utime(tmp_path / key, (1000 - age, 1000 - age))
    assert store.prune(2, protect=["older"]) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new", "older"]


def test_replace_symlink_is_atomic_and_repoints(tmp_path: Path) -> None:
    link = tmp_path / "guest" / "kata-initrd.img"
    replace_symlink(link, tmp_path / "one")
    replace_symlink(link, tmp_path / "two")
    assert os.readlink(link) == str(tmp_path / "two")
    assert [p.name for p in link.parent.iterdir()] == ["kata-initrd.img"]


def test_linking_one_flavour_never_prunes_the_initrd_another_flavour_links(tmp_path: Path) -> None:
    from kata.image.initrd import KEEP_BUILDS, InitrdBuild, link_initrd

    store = tmp_path / "initrd"

    def build(index: int) -> InitrdBuild:
        entry = store / f"key{index}"
        entry.mkdir(parents=True)
        (entry / "kata-initrd.img").write_bytes(b"x")
        return InitrdBuild(f"key{index}", entry / "kata-initrd.img", False, {})

    (tmp_path / "guest").mkdir()
    (tmp_path / "guest-generic").mkdir()
    link_initrd(build(0), tmp_path / "guest-generic" / "kata-initrd.img")
    for index in range(1, KEEP_BUILDS + 3):  # the other flavour is rebuilt again and again
        link_initrd(build(index), tmp_path / "guest" / "kata-initrd.img")
    assert (tmp_path / "guest-generic" / "kata-initrd.img").read_bytes() == b"x"
    assert sorted(p.name for p in store.iterdir()) == ["key0", *(f"key{i}" for i in range(3, KEEP_BUILDS + 3))]
