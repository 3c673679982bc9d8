"""Which candidate serves a task: session affinity by rendezvous hashing, else least loaded.

Sans-IO. Rendezvous (highest-random-weight) hashing, Thaler and Ravishankar 1996: each replica
scores `blake2b(session_id, replica_id)` and a session goes to the highest score. Adding or
removing a replica moves only the sessions that scored it highest, and every process with the
same replicas computes the same order — hence a stable hash, never Python's salted `hash()`.
A session stays on its first-ranked replica while that has room (`running < capacity`), moves
to the next ranked with room, and to the least loaded when none has room (HOST.md, routing 2).

Least loaded compares `running / capacity` (`capacity`: the replica's `slots_total` when its
props say, else its `max_connections`); ties are broken by the caller's `rng`, so a seeded host
routes reproducibly and an unseeded one spreads a herd of equal choices.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Load", "choose", "rendezvous_order", "rendezvous_score"]


@dataclass(frozen=True, slots=True)
class Load:
    """A candidate as routing sees it."""

    replica_id: str
    running: int
    capacity: int


def rendezvous_score(session_id: str, replica_id: str) -> int:
    """A stable 64-bit weight; the length prefix keeps ("ab", "c") and ("a", "bc") apart."""
    key = f"{len(session_id)}:{session_id}\x00{replica_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def rendezvous_order(session_id: str, replica_ids: Sequence[str]) -> list[int]:
    """Indices of `replica_ids`, highest weight first (ties, practically never, by id)."""
    return sorted(
        range(len(replica_ids)),
        key=lambda i: (-rendezvous_score(session_id, replica_ids[i]), replica_ids[i]),
    )


def choose(loads: Sequence[Load], session_id: str | None, rng: random.Random) -> tuple[int, str]:
    """The index of the candidate to use and why. `loads` must not be empty."""
    if not loads:
        raise ValueError("choose() needs at least one candidate")
    if session_id is not None:
        order = rendezvous_order(session_id, [load.replica_id for load in loads])
        for rank, i in enumerate(order):
            if loads[i].running < loads[i].capacity:
                return (
                    i,
                    "session affinity"
                    if rank == 0
                    else f"session affinity (rank {rank + 1}: higher ranks full)",
                )
        i, _ = _least_loaded(loads, rng)
        return i, "least loaded (every replica of the session's ranking is full)"
    return _least_loaded(loads, rng)


def _least_loaded(loads: Sequence[Load], rng: random.Random) -> tuple[int, str]:
    ratios = [load.running / load.capacity for load in loads]
    best = min(ratios)
    tied = [i for i, ratio in enumerate(ratios) if ratio == best]
    i = tied[0] if len(tied) == 1 else rng.choice(tied)
    return i, f"least loaded ({loads[i].running}/{loads[i].capacity})"
