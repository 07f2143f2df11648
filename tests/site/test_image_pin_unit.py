"""Image references as Docker reads them, and site.yml pinned on the value's own line only."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsflux.diagnostics import UserError
from bidsflux.images.pin import Pin, same_image_keys, write
from bidsflux.images.registry import parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("ref", "registry", "repository", "tag", "digest"), [
    ("registry.localhost/ni-dataops/containers/dicom_indexer:0.1.0", "registry.localhost",
     "ni-dataops/containers/dicom_indexer", "0.1.0", None),
    (f"127.0.0.1:5000/g/p/img:abc@{DIGEST}", "127.0.0.1:5000", "g/p/img", "abc", DIGEST),
    ("localhost/x:1", "localhost", "x", "1", None),
    ("postgres:16-alpine", "", "postgres", "16-alpine", None),  # Docker Hub: no registry host
    ("gitlab/gitlab-ee:17.7.1-ee.0", "", "gitlab/gitlab-ee", "17.7.1-ee.0", None),
    (f"reg.example.org:8443/a/b@{DIGEST}", "reg.example.org:8443", "a/b", None, DIGEST),
])
def test_parse_like_docker(ref: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    got = parse(ref)
    assert (got.registry, got.repository, got.tag, got.digest) == (registry, repository, tag, digest)
    assert str(got) == ref


def test_same_image_keys_ignore_tag_and_digest_and_non_references() -> None:
    images = {"dicom_indexer": "r.local/g/p/dicom_indexer:1", "storescp": f"r.local/g/p/dicom_indexer:0@{DIGEST}",
              "mercure_prefix": "mercureimaging/mercure-", "postgres": "postgres:16"}
    assert same_image_keys(images, "dicom_indexer") == ["dicom_indexer", "storescp"]
    with pytest.raises(UserError, match="no images.nothing"):
        same_image_keys(images, "nothing")


SITE = """# a comment that must stay
images:
  gitlab: gitlab/gitlab-ee:17.7.1-ee.0  # keep
  dicom_indexer: "r.local/g/p/dicom_indexer:0.1.0"   # quoted, with a comment
  storescp: r.local/g/p/dicom_indexer:0.1.0
"""


def test_write_changes_only_the_values(tmp_path: Path) -> None:
    site = tmp_path / "site.yml"
    site.write_text(SITE)
    new = f"r.local/g/p/dicom_indexer:abc@{DIGEST}"
    assert write(site, [Pin("dicom_indexer", "r.local/g/p/dicom_indexer:0.1.0", new),
                        Pin("storescp", "r.local/g/p/dicom_indexer:0.1.0", new)])
    assert site.read_text() == SITE.replace('"r.local/g/p/dicom_indexer:0.1.0"', f'"{new}"').replace(
        "  storescp: r.local/g/p/dicom_indexer:0.1.0", f"  storescp: {new}")
    assert not write(site, [Pin("storescp", new, new)])  # nothing to change: not even rewritten


def test_write_refuses_a_value_it_cannot_find_on_its_line(tmp_path: Path) -> None:
    site = tmp_path / "site.yml"
    site.write_text("images:\n  storescp: >-\n    r.local/g/p/dicom_indexer:0.1.0\n")
    with pytest.raises(UserError, match="set it to .* by hand"):
        write(site, [Pin("storescp", "r.local/g/p/dicom_indexer:0.1.0", f"r.local/x:1@{DIGEST}")])
    assert site.read_text() == "images:\n  storescp: >-\n    r.local/g/p/dicom_indexer:0.1.0\n"
