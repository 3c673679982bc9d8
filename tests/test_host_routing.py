"""Routing, sans-IO (HOST.md, "Which replica serves a task"): rendezvous affinity on a stable
hash, the next ranked with room, least loaded by running/capacity, ties from a seedable rng."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

import oai_adapter._routing
from oai_adapter._routing import Load, choose, rendezvous_order

REPLICAS = [f"gpu-{i}" for i in range(5)]
SESSIONS = [f"user-{i}" for i in range(200)]

# The routing module alone (it imports only the standard library): a quick interpreter start.
PLACE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("routing", sys.argv[3])
routing = importlib.util.module_from_spec(spec)
sys.modules["routing"] = routing
spec.loader.exec_module(routing)
replicas = json.loads(sys.argv[1]); sessions = json.loads(sys.argv[2])
print(json.dumps([replicas[routing.rendezvous_order(s, replicas)[0]] for s in sessions]))
"""


def test_affinity_is_the_same_in_processes_with_different_hash_seeds() -> None:
    placements = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                PLACE,
                json.dumps(REPLICAS),
                json.dumps(SESSIONS),
                oai_adapter._routing.__file__,
            ],
            env=env,
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
        )
        placements.append(json.loads(out.stdout))
    here = [REPLICAS[rendezvous_order(s, REPLICAS)[0]] for s in SESSIONS]
    assert placements[0] == placements[1] == here
    # and a salted `hash()` would have differed between the two processes: spread is real
    assert len(set(here)) == len(REPLICAS)


def loads(*running: int, capacity: int = 4) -> list[Load]:
    return [Load(REPLICAS[i], r, capacity) for i, r in enumerate(running)]


def test_session_goes_to_its_first_ranked_replica_while_it_has_room() -> None:
    first = rendezvous_order("user-42", REPLICAS[:3])[0]
    running = [0, 0, 0]
    running[first] = 3  # the busiest, but it has room (capacity 4): the session stays
    i, why = choose(loads(*running), "user-42", random.Random(0))
    assert i == first
    assert why == "session affinity"


def test_session_moves_to_the_next_ranked_with_room_when_its_replica_is_full() -> None:
    order = rendezvous_order("user-42", REPLICAS[:3])
    running = [0, 0, 0]
    running[order[0]] = 4  # full
    running[order[1]] = 3  # more loaded than the third, but ranked higher: it wins
    i, why = choose(loads(*running), "user-42", random.Random(0))
    assert i == order[1]
    assert "rank 2" in why


def test_session_goes_to_the_least_loaded_when_every_replica_is_full() -> None:
    i, why = choose(
        [Load("a", 8, 4), Load("b", 5, 4), Load("c", 9, 4)], "user-42", random.Random(0)
    )
    assert i == 1
    assert why.startswith("least loaded")


def test_least_loaded_compares_running_over_capacity() -> None:
    # 3/8 < 1/2: the bigger replica wins although it runs more tasks
    i, _ = choose([Load("small", 1, 2), Load("big", 3, 8)], None, random.Random(0))
    assert i == 1


def test_removing_a_replica_moves_only_its_sessions() -> None:
    before = {s: REPLICAS[rendezvous_order(s, REPLICAS)[0]] for s in SESSIONS}
    rest = [r for r in REPLICAS if r != "gpu-2"]
    after = {s: rest[rendezvous_order(s, rest)[0]] for s in SESSIONS}
    moved = {s for s in SESSIONS if before[s] != after[s]}
    assert moved == {s for s in SESSIONS if before[s] == "gpu-2"}


def test_ties_are_broken_by_the_rng_and_a_seed_reproduces_them() -> None:
    tied = loads(1, 1, 1)
    picks = [choose(tied, None, random.Random(seed))[0] for seed in range(60)]
    assert set(picks) == {0, 1, 2}  # every tied replica is chosen
    again = [choose(tied, None, random.Random(seed))[0] for seed in range(60)]
    assert picks == again


@given(
    running=st.lists(st.integers(0, 10), min_size=1, max_size=6),
    capacity=st.lists(st.integers(1, 10), min_size=6, max_size=6),
    session=st.one_of(st.none(), st.text(max_size=8)),
    seed=st.integers(0, 1000),
)
def test_choice_is_a_candidate_with_room_or_the_least_loaded(
    running: list[int], capacity: list[int], session: str | None, seed: int
) -> None:
    cands = [Load(f"r{i}", r, capacity[i]) for i, r in enumerate(running)]
    i, _ = choose(cands, session, random.Random(seed))
    ratios = [c.running / c.capacity for c in cands]
    if session is None or all(c.running >= c.capacity for c in cands):
        assert ratios[i] == min(ratios)
    else:
        order = rendezvous_order(session, [c.replica_id for c in cands])
        with_room = [j for j in order if cands[j].running < cands[j].capacity]
        assert i == with_room[0]


def test_sessions_spread_over_the_replicas() -> None:
    counts = Counter(rendezvous_order(s, REPLICAS)[0] for s in SESSIONS)
    assert min(counts.values()) > len(SESSIONS) / len(REPLICAS) / 3
