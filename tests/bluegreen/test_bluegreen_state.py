"""What a host records: state.json (live colour, versions, history, retention) and the journal."""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta

import pytest

from imdb_deploy.bluegreen.layout import COLOURS
from imdb_deploy.bluegreen.state import HostState, Journal, StateError, new_id, now_iso


def test_empty_state_file_is_a_fresh_host() -> None:
    for text in ["", "  \n"]:
        state = HostState.parse(text)
        assert state == HostState()
        assert state.live is None
        assert state.idle == "blue"  # the first release goes to blue
        assert state.live_version is None
        assert state.kept_version is None


@pytest.mark.parametrize(
    "state",
    [
        HostState(),
        HostState("blue", {"blue": "v1"}, ["v1"]),
        HostState("green", {"blue": "v1", "green": "v2"}, ["v1", "v2"]),
        HostState(None, {"green": "v3"}, ["v1", "v3"]),
        HostState("blue", {"blue": "v1"}, ["v1"], {"v1": "sha256:" + "a" * 64}, {"v1": "t"}),
    ],
)
def test_state_round_trip(state: HostState) -> None:
    text = state.dump()
    assert text.endswith("\n")
    assert HostState.parse(text) == state
    assert json.loads(text) == {
        "live": state.live,
        "colours": state.colours,
        "releases": state.releases,
        "digests": state.digests,
        "passed": state.passed,
    }


def test_state_records_digests_and_gate_passes_and_prunes_them() -> None:
    state = HostState().switched("blue", "v1", "sha256:1").gate_passed("v1", "t1")
    state = state.switched("green", "v2", "sha256:2")
    assert state.live_version == "v2"
    assert state.live_digest == "sha256:2"
    assert state.digests == {"v1": "sha256:1", "v2": "sha256:2"}
    assert state.passed == {"v1": "t1"}
    assert state.switched("blue", "v1").digests["v1"] == "sha256:1"  # a rollback keeps it
    pruned = state.pruned(["v1"])
    assert (pruned.releases, pruned.digests, pruned.passed) == (["v2"], {"v2": "sha256:2"}, {})
    assert pruned.colours == state.colours
    assert HostState().live_digest is None


def test_state_parse_takes_missing_fields_as_empty() -> None:
    assert HostState.parse('{"live": "green"}') == HostState("green", {}, [])
    assert HostState.parse('{"colours": {"blue": 7}, "releases": [7]}') == HostState(
        None, {"blue": "7"}, ["7"]
    )


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "not json",
        "[]",
        '"a string"',
        "42",
        '{"colours": null}',
        '{"colours": [1, 2]}',
        '{"releases": 5}',
    ],
)
def test_invalid_state_is_refused(text: str) -> None:
    with pytest.raises(StateError, match=r"state\.json is not a valid record"):
        HostState.parse(text)


@pytest.mark.parametrize("live", ["red", "BLUE", 1, ""])
def test_unknown_live_colour_is_refused(live: object) -> None:
    with pytest.raises(StateError, match="unknown live colour"):
        HostState.parse(json.dumps({"live": live, "colours": {}, "releases": []}))


def test_idle_live_and_kept_versions() -> None:
    state = HostState("green", {"blue": "v1", "green": "v2"}, ["v1", "v2"])
    assert state.idle == "blue"
    assert state.live_version == "v2"
    assert state.kept_version == "v1"

    blue = HostState("blue", {"blue": "v3"}, ["v3"])
    assert blue.idle == "green"
    assert blue.live_version == "v3"
    assert blue.kept_version is None  # nothing kept beside it

    # No live colour: nothing is live, nothing is a rollback target, even if a container exists.
    orphan = HostState(None, {"blue": "v1"}, ["v1"])
    assert (orphan.live_version, orphan.kept_version, orphan.idle) == (None, None, "blue")


def test_switched_makes_the_colour_live_and_records_the_release() -> None:
    before = HostState("blue", {"blue": "v1"}, ["v1"])
    after = before.switched("green", "v2")
    assert after == HostState("green", {"blue": "v1", "green": "v2"}, ["v1", "v2"])
    assert (after.live_version, after.kept_version, after.idle) == ("v2", "v1", "blue")
    assert before == HostState("blue", {"blue": "v1"}, ["v1"])  # the old state is untouched


def test_switched_moves_a_redeployed_version_to_the_end() -> None:
    state = HostState("green", {"blue": "v2", "green": "v3"}, ["v1", "v2", "v3"])
    back = state.switched("blue", "v1")
    assert back.releases == ["v2", "v3", "v1"]
    assert back.releases.count("v1") == 1
    assert back.colours == {"blue": "v1", "green": "v3"}
    assert back.live_version == "v1"
    assert back.kept_version == "v3"


def test_without_removes_a_colours_container() -> None:
    state = HostState("green", {"blue": "v1", "green": "v2"}, ["v1", "v2"])
    removed = state.without("blue")
    assert removed == HostState("green", {"green": "v2"}, ["v1", "v2"])
    assert removed.kept_version is None
    assert state.colours == {"blue": "v1", "green": "v2"}


def test_prunable_examples() -> None:
    history = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"]
    state = HostState("green", {"blue": "v6", "green": "v7"}, history)
    assert state.prunable(5) == ["v1", "v2"]
    assert state.prunable(7) == []
    assert state.prunable(100) == []
    assert state.prunable(1) == ["v1", "v2", "v3", "v4", "v5"]  # live v7 and kept v6 stay

    # After a rollback to an old release: history order is the order releases went live.
    rolled = HostState(
        "blue", {"blue": "v2", "green": "v7"}, ["v1", "v3", "v4", "v5", "v6", "v7", "v2"]
    )
    assert rolled.prunable(2) == ["v1", "v3", "v4", "v5", "v6"]

    # A kept release older than the newest `keep` is kept all the same.
    old_kept = HostState("blue", {"blue": "v7", "green": "v2"}, history)
    assert old_kept.prunable(2) == ["v1", "v3", "v4", "v5"]

    # A live version missing from the history (hand-edited file) is still never pruned.
    odd = HostState("blue", {"blue": "v1", "green": "v2"}, ["v1", "v2", "v3", "v4"])
    assert odd.prunable(1) == ["v3"]


def test_prunable_invariants_over_random_histories() -> None:
    rng = random.Random(20260101)  # noqa: S311
    versions = [f"v{i:02d}" for i in range(20)]
    for _ in range(500):
        releases = rng.sample(versions, rng.randint(0, 12))
        live = rng.choice([None, *COLOURS])
        colours = {
            colour: rng.choice(releases or versions) for colour in COLOURS if rng.random() < 0.8
        }
        keep = rng.randint(1, 8)
        state = HostState(live, colours, releases)
        pruned = state.prunable(keep)

        protected = {v for v in (state.live_version, state.kept_version) if v is not None}
        newest = set(releases[-keep:])
        assert not protected & set(pruned), (state, keep)
        assert not newest & set(pruned), (state, keep)
        # Everything else goes, in history order.
        assert pruned == [v for v in releases if v not in newest | protected], (state, keep)
        assert len(releases) - len(pruned) <= keep + len(protected)


def test_deploys_rollbacks_and_pruning_never_lose_the_live_or_kept_release() -> None:
    rng = random.Random(7)  # noqa: S311
    for keep in range(1, 5):
        state = HostState()
        released = 0
        for _ in range(60):
            roll = rng.random()
            if roll < 0.6 or not state.releases:
                released += 1
                state = state.switched(state.idle, f"v{released}")  # a new release
            elif roll < 0.8 and state.kept_version is not None:
                state = state.switched(state.idle, state.kept_version)  # fast rollback
            else:
                state = state.switched(state.idle, rng.choice(state.releases))  # redeploy
            doomed = state.prunable(keep)
            state = HostState(
                state.live, dict(state.colours), [v for v in state.releases if v not in doomed]
            )
            assert state.live_version == state.releases[-1]
            assert state.live_version in state.releases
            assert state.kept_version is None or state.kept_version in state.releases
            assert len(state.releases) == len(set(state.releases))
            assert len(state.releases) <= max(keep, 2)


# ---- the journal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "journal",
    [Journal("abc123", None, "blue", "v1"), Journal("def456", "blue", "green", "v2")],
)
def test_journal_round_trip(journal: Journal) -> None:
    text = journal.dump()
    assert text.endswith("\n")
    assert Journal.parse(text) == journal


def test_empty_journal_means_no_switch_in_progress() -> None:
    assert Journal.parse("") is None
    assert Journal.parse(" \n") is None


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '"x"',
        '{"deploy_id": "a", "to_colour": "blue"}',
        '{"deploy_id": "a", "version": "v1"}',
        '{"to_colour": "blue", "version": "v1"}',
    ],
)
def test_invalid_journal_is_refused(text: str) -> None:
    with pytest.raises(StateError, match=r"journal\.json is not a valid record"):
        Journal.parse(text)


def test_ids_and_timestamps() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    stamp = now_iso()
    assert stamp.endswith("+00:00")
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.microsecond == 0
