"""The per-user state table, addressed by (partition, key).

A user's row lives in the partition their events arrive on, whatever partitioner the storefront's
producer uses: the only assumption is Kafka Streams' own, that one key always lands in one
partition. Faust's Table API picks a row's partition implicitly (the "current event", or a
murmur2 hash of the key); this wrapper names it explicitly, so the agent, the idle sweep and the
tests all say which partition they mean.

Writes go to the changelog first (the agent sends a batch's rows to `changelog_topic` itself, as
producer batches, and awaits them before acknowledging the input; `send` is the one-row path) and
are applied to the local RocksDB copy only when the caller
says so (`put_local`, with the changelog offset they were stored at): a local row is never ahead
of its changelog.

Relies on Faust 0.15's RocksDB store internals (`_db_for_partition`, `_visible_items`,
`set_persisted_offset`); the dependency pin in pyproject.toml keeps them where they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.types import TP


class StateTable:
    def __init__(self, table: Any) -> None:
        self.table = table  # a faust Table with key/value type bytes, on rocksdb://

    @property
    def _store(self) -> Any:
        return self.table.data

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic_name

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._store._db_for_partition(partition).get(key)

    async def send(self, partition: int, key: bytes, value: bytes | None) -> Any:
        """Send a row (or a tombstone) to the changelog partition; returns the delivery future."""
        return await self.table.app.producer.send(self.changelog_topic, key, value,
                                                  partition, None, None)

    def put_local(self, partition: int, rows: dict[bytes, bytes | None],
                  changelog_offset: int | None = None) -> None:
        """Apply rows already stored in the changelog (up to `changelog_offset`) locally; the
        offset tells a restarted worker where to resume reading the changelog."""
        db = self._store._db_for_partition(partition)
        for key, value in rows.items():
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        if changelog_offset is not None:
            self._store.set_persisted_offset(self.changelog_tp(partition), changelog_offset)

    async def delete(self, partition: int, key: bytes) -> None:
        """Delete locally, then tombstone the changelog (the idle sweep). Local first: the caller
        checked the row without yielding, and an agent write that comes after this await must
        not be deleted."""
        self._store._db_for_partition(partition).delete(key)
        await self.send(partition, key, None)

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every row of one partition (Faust's own offset bookkeeping key excluded)."""
        store = self._store
        return store._visible_items(store._db_for_partition(partition))

    def other_partitions_with(self, partition: int, key: bytes) -> list[int]:
        """Partitions held here, other than `partition`, that have a row for `key` (a producer
        changed its partitioner, or two producers disagree)."""
        dbs = self._store._dbs
        return [p for p, db in list(dbs.items()) if p != partition and db.get(key) is not None]

    def active_partitions(self, app: Any) -> set[int]:
        """Partitions of the table this worker is actively serving right now (not standbys)."""
        topic = self.changelog_topic
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}

    def changelog_tp(self, partition: int) -> TP:
        return TP(self.changelog_topic, partition)
