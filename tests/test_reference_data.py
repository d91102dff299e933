"""The vendored reference data (tests/data) is complete and intact.

A clone through a tool that leaves large files out (Git LFS pointers, partial checkouts)
would otherwise show up as puzzling parity failures far from the cause.
"""
import hashlib

from conftest import DATA


def listed_sums():
    sums = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    return sums


def test_every_reference_file_is_present_and_intact():
    sums = listed_sums()
    assert len(sums) == 24
    for name, digest in sums.items():
        path = DATA / name
        assert path.is_file(), f"{path} is missing: expected it from the repository (tests/data/SHA256SUMS)"
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        assert actual == digest, f"{path} has sha256 {actual}, expected {digest}: truncated or replaced?"


def test_no_unlisted_reference_file():
    # __pycache__: bytecode of the fixture generators, which tests import for their weight recipes
    files = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files - set(listed_sums()) == {"SHA256SUMS", "README.md", "fixtures/README.md", "official/README.md"}
