"""SQLite measurement store (stdlib ``sqlite3``, WAL mode, versioned schema).

A measurement is keyed by (device fingerprint, backend settings, signature, grid point). Each one is
committed in its own transaction as soon as it is taken, so a profiling run killed at any moment —
even with ``kill -9`` — loses at most the measurement in flight, and a restart skips everything stored.

Two processes may share one store (two profilers, a profile and a validation): environments are
created atomically, and a point already stored is never overwritten nor duplicated — the first
measurement stored wins, and ``put`` tells the second writer that its value was not kept.

Schema versions: 1 — the measurements; 2 — plus ``telemetry`` (JSON, nullable): the conditions a
device reported while measuring (``Measurement.conditions``; phones: temperatures, frequencies,
cool-downs). A version-1 store is upgraded in place when opened (one ``ALTER TABLE ADD COLUMN``; its
rows keep ``telemetry`` NULL), so old stores stay readable and resumable.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..devices.base import Measurement
from ..layers import LayerPoint

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, settings TEXT NOT NULL, environment TEXT NOT NULL,
    UNIQUE (fingerprint, settings));
CREATE TABLE IF NOT EXISTS measurements (
    env_id INTEGER NOT NULL REFERENCES environments(id),
    signature TEXT NOT NULL,
    in_channels INTEGER NOT NULL, out_channels INTEGER NOT NULL, sparsity REAL NOT NULL, input_hw INTEGER NOT NULL,
    median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL, iqr_ms REAL NOT NULL,
    runs INTEGER NOT NULL, rounds INTEGER NOT NULL, outliers INTEGER NOT NULL,
    measured_at REAL NOT NULL,
    telemetry TEXT,
    PRIMARY KEY (env_id, signature, in_channels, out_channels, sparsity, input_hw));
"""
_COLUMNS = ("env_id, signature, in_channels, out_channels, sparsity, input_hw, median_ms, p10_ms, p90_ms, iqr_ms, "
            "runs, rounds, outliers, measured_at, telemetry")


class StoreError(RuntimeError):
    """A store file that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class StoredMeasurement:
    signature: str
    point: LayerPoint
    measurement: Measurement
    measured_at: float

    @property
    def conditions(self) -> dict | None:
        return self.measurement.conditions


def _settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


class MeasurementStore:
    """Open (or create) the store at ``path``.

    >>> store = MeasurementStore(":memory:")
    >>> store.schema_version
    2
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a latbench measurement store ({err}); "
                             "give another --store path or move the file away") from err

    def _migrate(self) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {row[0]}, newer than this latbench "
                                 f"({SCHEMA_VERSION}); upgrade latbench")
            elif int(row[0]) < 2:
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(measurements)")}
                if "telemetry" not in columns:
                    self._db.execute("ALTER TABLE measurements ADD COLUMN telemetry TEXT")
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "MeasurementStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def environment_id(self, fingerprint: str, settings: dict, environment: dict) -> int:
        """The id of (fingerprint, settings), created with ``environment`` when absent. Safe when two
        processes ask at once: both get the same id (the UNIQUE key makes the second insert a no-op)."""
        s = _settings_json(settings)
        select = "SELECT id FROM environments WHERE fingerprint=? AND settings=?"
        row = self._db.execute(select, (fingerprint, s)).fetchone()
        if row:
            return int(row[0])
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO environments (fingerprint, settings, environment) VALUES (?, ?, ?)",
                             (fingerprint, s, json.dumps(environment, sort_keys=True)))
            return int(self._db.execute(select, (fingerprint, s)).fetchone()[0])

    def environment(self, env_id: int) -> dict:
        row = self._db.execute("SELECT fingerprint, settings, environment FROM environments WHERE id=?",
                               (env_id,)).fetchone()
        if row is None:
            raise StoreError(f"no environment {env_id} in {self.path}")
        return {"fingerprint": row[0], "settings": json.loads(row[1]), "environment": json.loads(row[2])}

    def update_environment(self, env_id: int, values: dict, replace: bool = True) -> dict:
        """Add ``values`` to the stored environment record (e.g. the reference's nominal latency) and return
        the record. ``replace=False`` keeps keys already there: a second process that measured the same
        unit must adopt the first one's, in which the stored measurements are expressed."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")   # read and write in one transaction: no lost update
            env = self.environment(env_id)["environment"]
            env.update(values if replace else {k: v for k, v in values.items() if k not in env})
            self._db.execute("UPDATE environments SET environment=? WHERE id=?", (json.dumps(env, sort_keys=True), env_id))
        return env

    def environments(self) -> list[tuple[int, str, int]]:
        """(id, fingerprint, number of measurements) for every environment in the store."""
        return [tuple(r) for r in self._db.execute(
            "SELECT e.id, e.fingerprint, COUNT(m.env_id) FROM environments e "
            "LEFT JOIN measurements m ON m.env_id = e.id GROUP BY e.id ORDER BY e.id")]

    def put(self, env_id: int, signature: str, point: LayerPoint, m: Measurement) -> bool:
        """Store one measurement in its own transaction. A measurement already stored at the same key is
        kept (first writer wins: another process may have measured the point meanwhile) and ``False`` is
        returned; ``True`` when this one was stored."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO measurements ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (env_id, signature, point.in_channels, point.out_channels, float(point.sparsity), point.input_hw,
                 m.median_ms, m.p10_ms, m.p90_ms, m.iqr_ms, m.runs, m.rounds, m.outliers, time.time(),
                 json.dumps(m.conditions, sort_keys=True) if m.conditions is not None else None))
            return cur.rowcount == 1

    def put_together(self, env_id: int, rows: list[tuple[str, LayerPoint, Measurement]]) -> bool:
        """Store measurements that only mean something together (a network and the anchor measured beside it)
        in one transaction: all or none. ``False`` (nothing stored) when any key is already there."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if any(self.has(env_id, sig, point) for sig, point, _ in rows):
                return False
            for sig, point, m in rows:
                self._db.execute(
                    f"INSERT INTO measurements ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (env_id, sig, point.in_channels, point.out_channels, float(point.sparsity), point.input_hw,
                     m.median_ms, m.p10_ms, m.p90_ms, m.iqr_ms, m.runs, m.rounds, m.outliers, time.time(),
                     json.dumps(m.conditions, sort_keys=True) if m.conditions is not None else None))
            return True

    def has(self, env_id: int, signature: str, point: LayerPoint) -> bool:
        return self._db.execute(
            "SELECT 1 FROM measurements WHERE env_id=? AND signature=? AND in_channels=? AND out_channels=? "
            "AND sparsity=? AND input_hw=?",
            (env_id, signature, point.in_channels, point.out_channels, float(point.sparsity), point.input_hw),
        ).fetchone() is not None

    def missing(self, env_id: int, items: Iterable[tuple[str, LayerPoint]]) -> list[tuple[str, LayerPoint]]:
        done = {(r[0], LayerPoint(r[1], r[2], r[3], r[4])) for r in self._db.execute(
            "SELECT signature, in_channels, out_channels, sparsity, input_hw FROM measurements WHERE env_id=?",
            (env_id,))}
        return [item for item in items if item not in done]

    def rows(self, env_id: int, signatures: Iterable[str] | None = None) -> list[StoredMeasurement]:
        sql = ("SELECT signature, in_channels, out_channels, sparsity, input_hw, median_ms, p10_ms, p90_ms, iqr_ms, "
               "runs, rounds, outliers, measured_at, telemetry FROM measurements WHERE env_id=?")
        out = []
        wanted = set(signatures) if signatures is not None else None
        for r in self._db.execute(sql + " ORDER BY signature, input_hw, in_channels, out_channels, sparsity", (env_id,)):
            if wanted is not None and r[0] not in wanted:
                continue
            conditions = json.loads(r[13]) if r[13] else None
            out.append(StoredMeasurement(r[0], LayerPoint(r[1], r[2], r[3], r[4]),
                                         Measurement(r[0], *r[5:12], conditions=conditions), r[12]))
        return out

    def count(self, env_id: int | None = None) -> int:
        if env_id is None:
            return int(self._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM measurements WHERE env_id=?", (env_id,)).fetchone()[0])
