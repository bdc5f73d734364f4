"""Asynchronous rollouts (`rollout.async=true`): the bookkeeping, as plain Python (no Ray, no clock).

    plan = LookAhead(max_inflight=2, max_staleness=1, sync_interval=1, first_grpo_step=0, start_step=0, steps=100)
    plan.wanted(step=5, submitted={6})     # -> []: batch 6 is already out; depth min(2, 1) = 1 ahead
    plan.min_version(7)                    # -> 6: batch 7 must not be generated with weights older than 6

    queue = ChunkQueue()
    queue.push(Chunk(ticket=1, index=0, payload=..., min_version=6))
    queue.take(version=5)                  # -> None: nothing admissible yet (oldest first among the admissible)

Versions. The trainer's weights after s optimizer steps are version s; batch j is trained on at version j.
Rank 0 syncs version v to the actors after step v-1 when v % sync_interval == 0 (and when GRPO starts after
`rollout.sft_steps`, and at a restart's first step). A batch generated with version w and trained on at
version j is j - w versions stale (its age).

Admission. The trainer submits the prompts of batch j (built with its current model) at most
min(max_inflight, max_staleness) steps ahead, and asks that it be generated with weights no older than
`min_version(j)` = min(j - max_staleness, the last version synced before j is trained on): the pool's queue
gives an idle actor the oldest chunk whose requirement its current weights meet. So a batch never waits for
a version that will not come, and its age at training is within max_staleness whenever the syncs allow it
(with sync_interval > max_staleness + 1 they do not, as in the synchronous loop; the GRPO step then drops
what is beyond the bound and counts it).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


def split_evenly(n_items: int, n_parts: int) -> list[range]:
    """Contiguous ranges covering n_items, sizes differing by at most one (empty ranges dropped)."""
    base, extra = divmod(n_items, n_parts)
    out, start = [], 0
    for i in range(n_parts):
        size = base + (1 if i < extra else 0)
        if size:
            out.append(range(start, start + size))
        start += size
    return out


@dataclass
class LookAhead:
    """Which upcoming batches a trainer rank submits early, and the oldest weights each may be made with."""

    max_inflight: int
    max_staleness: int
    sync_interval: int
    first_grpo_step: int  # rollout.sft_steps: no rollouts before
    start_step: int  # where this run (or restart) began: rank 0 synced that version at start
    steps: int  # train.steps: nothing is submitted at or beyond it

    def __post_init__(self):
        if self.max_inflight < 1 or self.max_staleness < 0 or self.sync_interval < 1:
            raise ValueError(f"look-ahead: max_inflight >= 1, max_staleness >= 0 and sync_interval >= 1 needed, "
                             f"got {self.max_inflight}, {self.max_staleness}, {self.sync_interval}")

    @property
    def depth(self) -> int:
        """Batches ahead of the one being trained on: a batch submitted k steps early is at least k stale."""
        return min(self.max_inflight, self.max_staleness)

    def wanted(self, step: int, submitted: set[int] | frozenset = frozenset()) -> list[int]:
        """The batches to submit now, at trainer step `step` (whose own batch is `step`): step+1 ..
        step+depth that are GRPO steps, before `steps`, and not yet submitted; oldest first."""
        first = max(step + 1, self.first_grpo_step)
        return [j for j in range(first, min(step + self.depth, self.steps - 1) + 1) if j not in submitted]

    def synced_by(self, j: int) -> int:
        """The newest version rank 0 has synced when the trainer reaches step j (before training batch j)."""
        if j < self.first_grpo_step:
            return self.start_step
        periodic = j - j % self.sync_interval
        return max(self.start_step, self.first_grpo_step, periodic if periodic >= self.first_grpo_step else 0)

    def min_version(self, j: int) -> int:
        """The oldest weights batch j may be generated with (see the module docstring)."""
        return max(0, min(j - self.max_staleness, self.synced_by(j)))


@dataclass
class Chunk:
    """Part of one submitted batch, for one actor: `payload` is what the actor gets (prompts, sampling)."""

    ticket: int
    index: int
    payload: Any
    min_version: int = 0
    size: int = 1  # prompts in it (for queue depth in groups)


@dataclass
class Ticket:
    """One submitted batch: its chunks' results as they arrive."""

    parts: int
    results: dict[int, Any] = field(default_factory=dict)
    error: BaseException | None = None
    owner: str | None = None  # who submitted it (a trainer rank), so a restarted one can drop what it left

    @property
    def done(self) -> bool:
        return self.error is not None or len(self.results) == self.parts

    def assemble(self) -> list:
        """The chunks' results (lists) concatenated in chunk order; raises the ticket's error."""
        if self.error is not None:
            raise self.error
        if not self.done:
            raise RuntimeError(f"ticket has {len(self.results)} of {self.parts} chunks")
        return [x for i in range(self.parts) for x in self.results[i]]


class ChunkQueue:
    """Chunks waiting for an actor, oldest first; a chunk is taken only when the weights meet its min_version.
    A chunk whose actor died goes back to the front (it was the oldest when it was taken)."""

    def __init__(self):
        self._chunks: deque[Chunk] = deque()

    def push(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)

    def requeue(self, chunk: Chunk) -> None:
        self._chunks.appendleft(chunk)

    def take(self, version: int) -> Chunk | None:
        """The oldest chunk admissible at `version`, removed; None when there is none."""
        for i, chunk in enumerate(self._chunks):
            if chunk.min_version <= version:
                del self._chunks[i]
                return chunk
        return None

    def cancel(self, tickets: set[int]) -> int:
        """Drop the queued chunks of `tickets`; how many were dropped."""
        before = len(self._chunks)
        self._chunks = deque(c for c in self._chunks if c.ticket not in tickets)
        return before - len(self._chunks)

    def blocked(self, version: int) -> int:
        """Queued chunks that wait for newer weights than `version`."""
        return sum(c.min_version > version for c in self._chunks)

    def groups(self) -> int:
        return sum(c.size for c in self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)


def age_histogram(ages: list[int], max_staleness: int) -> dict[str, float]:
    """Samples per age (versions behind the trainer) as metrics: sample_age_0 .. sample_age_<max_staleness>,
    and sample_age_over for those beyond the bound (dropped by the GRPO step)."""
    counts = Counter(ages)
    out = {f"sample_age_{a}": float(counts.get(a, 0)) for a in range(max_staleness + 1)}
    out["sample_age_over"] = float(sum(n for a, n in counts.items() if a > max_staleness))
    return out


def rollout_idle(before: dict, after: dict) -> float | None:
    """1 - actor busy seconds / (elapsed seconds × actors) between two pool `stats()`; None when no time passed."""
    elapsed = after["uptime_s"] - before["uptime_s"]
    actors = max(1, after["actors"])
    if elapsed <= 0:
        return None
    busy = after["busy_s"] - before["busy_s"]
    return min(1.0, max(0.0, 1.0 - busy / (elapsed * actors)))
