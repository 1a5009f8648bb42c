"""Retention: newest N versions stay, protected ones always stay, others go (all their tags)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from imdb_deploy.images import retention
from imdb_deploy.images.retention import Release


def releases(count: int) -> list[Release]:
    return [
        Release(f"2026010{i}.000000-abc", f"2026-01-0{i}T00:00:00Z", {f"id{i}"}, {f"v{i}", f"s{i}"})
        for i in range(1, count + 1)
    ]


def versions(found: list[Release]) -> list[str]:
    return [r.version[:9] for r in found]


def test_keeps_the_newest_n() -> None:
    pruned = retention.select_prunable(releases(7), keep=5)
    assert versions(pruned) == ["20260102.", "20260101."]


def test_fewer_than_n_prunes_nothing() -> None:
    assert retention.select_prunable(releases(3), keep=5) == []


def test_protected_versions_and_tags_stay() -> None:
    pruned = retention.select_prunable(
        releases(7), keep=2, protected={"20260101.000000-abc", "registry:5000/x:s3-arm64"}
    )
    assert versions(pruned) == ["20260105.", "20260104.", "20260102."]


def test_keep_zero_and_negative() -> None:
    assert len(retention.select_prunable(releases(3), keep=0)) == 3
    with pytest.raises(ValueError, match="keep"):
        retention.select_prunable(releases(3), keep=-1)


def test_order_is_by_created_not_by_listing() -> None:
    shuffled = list(reversed(releases(4)))
    assert versions(retention.select_prunable(shuffled, keep=1)) == [
        "20260103.", "20260102.", "20260101.",
    ]  # fmt: skip


def test_group_by_version_label() -> None:
    label = retention.VERSION_LABEL
    created = retention.CREATED_LABEL
    grouped = retention.group(
        [
            ("sha256:a", ["1.0", "abc"], {label: "1.0", created: "2026-01-01"}),
            ("sha256:b", ["1.0-arm64", "abc-arm64"], {label: "1.0", created: "2026-01-02"}),
            ("sha256:c", ["foreign"], {}),
        ]
    )
    assert len(grouped) == 1
    assert grouped[0].images == {"sha256:a", "sha256:b"}
    assert grouped[0].tags == {"1.0", "abc", "1.0-arm64", "abc-arm64"}
    assert grouped[0].created == "2026-01-02"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("1.0", "1.0"), ("1.0-arm64", "1.0"), ("127.0.0.1:5000/mlops-imdb-api:1.0", "1.0"),
     ("repo:abc-amd64", "abc")],
)  # fmt: skip
def test_normalise(name: str, expected: str) -> None:
    assert retention.normalise(name) == expected


class FakeRegistry(retention.RegistryClient):
    """Answers tags/manifests/config from memory and records deletes."""

    def __init__(self, images: Mapping[str, tuple[str, str]]) -> None:
        super().__init__("127.0.0.1:1")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "deleted", [])

    def tags(self, name: str) -> list[str]:
        return sorted(self.images)  # type: ignore[attr-defined]

    def manifest(self, name: str, reference: str) -> tuple[str, dict[str, Any]]:
        version, created = self.images[reference]  # type: ignore[attr-defined]
        return f"sha256:{version}", {"config": {"digest": f"{version}|{created}"}}

    def labels(self, name: str, manifest: Mapping[str, Any]) -> dict[str, str]:
        version, created = str(manifest["config"]["digest"]).split("|")
        return {retention.VERSION_LABEL: version, retention.CREATED_LABEL: created}

    def delete(self, name: str, digest: str) -> None:
        self.deleted.append(digest)  # type: ignore[attr-defined]


def test_prune_registry_deletes_by_digest() -> None:
    fake = FakeRegistry({f"v{i}": (f"v{i}", f"2026-01-0{i}") for i in range(1, 5)})
    pruned = retention.prune_registry(fake, "mlops-imdb-api", keep=2, protected={"v1"})
    assert [r.version for r in pruned] == ["v2"]
    assert fake.deleted == ["sha256:v2"]  # type: ignore[attr-defined]
    dry = FakeRegistry({f"v{i}": (f"v{i}", f"2026-01-0{i}") for i in range(1, 5)})
    assert len(retention.prune_registry(dry, "x", keep=1, dry_run=True)) == 3
    assert dry.deleted == []  # type: ignore[attr-defined]


def test_registry_must_be_on_loopback() -> None:
    with pytest.raises(retention.RetentionError, match="loopback"):
        retention.RegistryClient("registry.example.com:443").tags("x")
