"""Quorum over groups: distinct approvers, one group each."""

from __future__ import annotations

from gatehouse.approval_flow import quorum_reached


def vote(user: str, *groups: str, kind: str = "approve") -> dict:
    return {"user": user, "groups": list(groups), "vote": kind}


def test_one_approval_from_the_group_is_a_quorum_of_one():
    assert quorum_reached([vote("U_A", "dba")], ["dba"], 1)
    assert not quorum_reached([], ["dba"], 1)
    assert not quorum_reached([vote("U_A", "security")], ["dba"], 1)


def test_a_quorum_of_two_needs_two_distinct_approvers():
    assert not quorum_reached([vote("U_A", "dba")], ["dba"], 2)
    assert quorum_reached([vote("U_A", "dba"), vote("U_B", "dba")], ["dba"], 2)


def test_two_groups_need_one_from_each_and_one_person_cannot_fill_both():
    both = vote("U_A", "dba", "security")
    assert not quorum_reached([both], ["dba", "security"], 1)
    assert quorum_reached([both, vote("U_B", "dba")], ["dba", "security"], 1)
    assert quorum_reached([vote("U_B", "dba"), both], ["dba", "security"], 1)


def test_a_deny_vote_counts_for_nothing_toward_the_quorum():
    assert not quorum_reached([vote("U_A", "dba", kind="deny")], ["dba"], 1)
