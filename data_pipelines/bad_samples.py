"""Bad-sample policy: the errors a sample may raise, and the counts that stop a run past a skip rate.

A sample that fails to load is skipped, logged with its shard and key, and counted here; when more than
`max_skip_fraction` of the samples tried fail (after `min_samples` tries), TooManyBadSamplesError names the
shards with the most failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_KEYS_PER_SHARD = 50  # keys remembered per shard (the counts stay exact)


class BadSampleError(Exception):
    """One sample cannot be used (unreadable, undecodable, too short); the loader skips it."""


class DecodeTimeoutError(BadSampleError):
    """Decoding one video took longer than the configured bound."""


class TooManyBadSamplesError(RuntimeError):
    """Too large a fraction of the samples failed; the message names the worst shards."""


class HungDecodesError(RuntimeError):
    """Several decodes hung past the bound; their threads are stuck, so the process starts no more."""


@dataclass
class SkipStats:
    """Samples tried and skipped, in total and per shard (a tar path, or a CSV/folder source)."""

    seen: int = 0
    skipped: int = 0
    seen_by_shard: dict[str, int] = field(default_factory=dict)
    skipped_by_shard: dict[str, int] = field(default_factory=dict)
    keys_by_shard: dict[str, list[str]] = field(default_factory=dict)

    def record(self, shard: str, key: str | None = None) -> None:
        """One sample tried; `key` given means it was skipped."""
        self.seen += 1
        self.seen_by_shard[shard] = self.seen_by_shard.get(shard, 0) + 1
        if key is not None:
            self.skipped += 1
            self.skipped_by_shard[shard] = self.skipped_by_shard.get(shard, 0) + 1
            keys = self.keys_by_shard.setdefault(shard, [])
            if len(keys) < MAX_KEYS_PER_SHARD:
                keys.append(key)

    def merge(self, other: SkipStats) -> None:
        self.seen += other.seen
        self.skipped += other.skipped
        for shard, n in other.seen_by_shard.items():
            self.seen_by_shard[shard] = self.seen_by_shard.get(shard, 0) + n
        for shard, n in other.skipped_by_shard.items():
            self.skipped_by_shard[shard] = self.skipped_by_shard.get(shard, 0) + n
        for shard, new in other.keys_by_shard.items():
            keys = self.keys_by_shard.setdefault(shard, [])
            keys.extend(new[: MAX_KEYS_PER_SHARD - len(keys)])

    def report(self) -> dict:
        """The counters a stream's `stats()` reports: samples seen and skipped, with keys per shard."""
        return {
            "samples_seen": self.seen,
            "skipped": self.skipped,
            "skip_fraction": self.fraction,
            "skipped_by_shard": {
                shard: {
                    "skipped": n,
                    "seen": self.seen_by_shard.get(shard, 0),
                    "keys": self.keys_by_shard[shard],
                }
                for shard, n in self.skipped_by_shard.items()
            },
        }

    @property
    def fraction(self) -> float:
        return self.skipped / self.seen if self.seen else 0.0

    def worst_shards(self, n: int = 5) -> list[tuple[str, int, int]]:
        """(shard, skipped, seen) for the `n` shards with the most skipped samples."""
        ranked = sorted(self.skipped_by_shard.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(shard, skipped, self.seen_by_shard.get(shard, 0)) for shard, skipped in ranked]

    def check(self, max_fraction: float, min_samples: int) -> None:
        """Raises TooManyBadSamplesError past the skip rate, once `min_samples` samples were tried."""
        if self.seen < max(min_samples, 1) or self.fraction <= max_fraction:
            return
        worst = "; ".join(
            f"{shard}: {skipped}/{seen} skipped (e.g. {', '.join(self.keys_by_shard.get(shard, [])[:3])})"
            for shard, skipped, seen in self.worst_shards()
        )
        raise TooManyBadSamplesError(
            f"{self.skipped} of {self.seen} samples failed to load ({self.fraction:.1%} > "
            f"data.max_skip_fraction={max_fraction}); worst shards: {worst}"
        )

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": self.skipped,
            "seen_by_shard": dict(self.seen_by_shard),
            "skipped_by_shard": dict(self.skipped_by_shard),
            "keys_by_shard": {k: list(v) for k, v in self.keys_by_shard.items()},
        }

    @staticmethod
    def from_dict(state: dict) -> SkipStats:
        return SkipStats(
            seen=int(state["seen"]),
            skipped=int(state["skipped"]),
            seen_by_shard=dict(state["seen_by_shard"]),
            skipped_by_shard=dict(state["skipped_by_shard"]),
            keys_by_shard={k: list(v) for k, v in state["keys_by_shard"].items()},
        )
