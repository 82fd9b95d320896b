//! `history`: berth's memory across restarts, in one SQLite database
//! (`<state-dir>/history.sqlite3`, through `rusqlite` with SQLite bundled):
//!
//! - `cycles`: one row per cycle that did something, failed, or saw a new
//!   revision — start and end, trigger, revision, version, result, error,
//!   and the actions (unit, host, container, kind, reason) as JSON;
//! - `episodes`: drift episodes — first seen, and when and how they ended
//!   (`healed` by berth, `cleared` by someone else or a new revision);
//! - `instances`: what a restart must not forget — the suspension, the
//!   parked (failed) revision, the revision the fleet settled to, and a
//!   rollback's pinned revision.
//!
//! Writes go through one writer thread over a bounded channel, so a cycle
//! never waits on the disk: a no-op cycle writes nothing at all, and a cycle
//! that did something enqueues a row (a full queue drops it, counted in
//! [`History::dropped`]). State changes the API makes (suspend, resume,
//! rollback) wait for their commit, so an answered request survives a
//! SIGKILL. Reads use their own connection (WAL: readers never block the
//! writer).
//!
//! Retention: per app instance at most [`Retention::max_cycles`] cycle rows
//! (default 1000) and none older than [`Retention::max_age`] (default 30
//! days); episodes likewise. Pruned every 100 writes. Nothing secret is
//! stored: the same texts the API shows.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// Writes that may wait for the writer before new ones are dropped.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("history database {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The writer thread could not commit a change (its SQLite error).
    #[error("history database: cannot write: {0}")]
    Write(String),
    #[error("history database: the writer stopped")]
    Stopped,
}

/// How much history is kept, per app instance.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_cycles: u32,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_cycles: 1000,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// One app instance: the app and its destination (`""` for none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    pub app: String,
    pub destination: String,
}

impl Instance {
    pub fn new(app: &str, destination: Option<&str>) -> Instance {
        Instance {
            app: app.to_string(),
            destination: destination.unwrap_or("").to_string(),
        }
    }
}

/// An action of a cycle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionRow {
    pub unit: String,
    pub host: String,
    pub container: String,
    pub kind: String,
    pub reason: String,
}

/// One cycle worth remembering.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CycleRow {
    /// Assigned by the database (a cursor for `before=`); 0 before.
    pub id: i64,
    pub app: String,
    pub destination: Option<String>,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// `start`, `interval`, `webhook`, `event`, `sync`, `rollback`, …
    pub trigger: String,
    pub revision: Option<String>,
    pub version: Option<String>,
    /// `applied`, `error`, `in_sync`, `drifted`, `suspended`.
    pub result: String,
    /// What it was: `deployed` (the fleet converged to a new revision),
    /// `healed` (drift reverted), `failed`, `refused` (the revision was not
    /// applied), or `seen` (a new revision, not applied: detect mode …).
    pub kind: String,
    pub error: Option<String>,
    pub actions: Vec<ActionRow>,
}

/// A drift episode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeRow {
    pub id: i64,
    pub app: String,
    pub destination: Option<String>,
    pub first_seen_unix: u64,
    /// `None` while it lasts.
    pub ended_unix: Option<u64>,
    /// `healed` (by berth) or `cleared` (the drift went away otherwise).
    pub ended_by: Option<String>,
    /// `host container (reason)` of each drifted unit when first seen.
    pub units: Vec<String>,
}

/// What a restart must not forget about an instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceState {
    pub suspended: bool,
    pub settled: Option<String>,
    pub failed: Option<String>,
    /// A rollback's revision, applied instead of the followed ref.
    pub pinned: Option<String>,
}

enum Write {
    Cycle(CycleRow),
    EpisodeStart {
        instance: Instance,
        at: u64,
        units: Vec<String>,
    },
    EpisodeEnd {
        instance: Instance,
        at: u64,
        by: &'static str,
    },
    State {
        instance: Instance,
        state: InstanceState,
        done: Option<mpsc::SyncSender<Result<(), String>>>,
    },
}

/// The history database, shared by every controller, the API and the CLI.
pub struct History {
    tx: mpsc::SyncSender<Write>,
    reader: Mutex<Connection>,
    dropped: std::sync::atomic::AtomicU64,
    path: PathBuf,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS cycles (
  id INTEGER PRIMARY KEY,
  app TEXT NOT NULL,
  destination TEXT NOT NULL,
  started_unix_ms INTEGER NOT NULL,
  ended_unix_ms INTEGER NOT NULL,
  trigger TEXT NOT NULL,
  revision TEXT,
  version TEXT,
  result TEXT NOT NULL,
  kind TEXT NOT NULL,
  error TEXT,
  actions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cycles_by_instance ON cycles (app, destination, id);
CREATE TABLE IF NOT EXISTS episodes (
  id INTEGER PRIMARY KEY,
  app TEXT NOT NULL,
  destination TEXT NOT NULL,
  first_seen_unix INTEGER NOT NULL,
  ended_unix INTEGER,
  ended_by TEXT,
  units TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS episodes_by_instance ON episodes (app, destination, id);
CREATE TABLE IF NOT EXISTS instances (
  app TEXT NOT NULL,
  destination TEXT NOT NULL,
  suspended INTEGER NOT NULL,
  settled TEXT,
  failed TEXT,
  pinned TEXT,
  PRIMARY KEY (app, destination)
);
";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn open(path: &Path) -> Result<Connection, HistoryError> {
    let open_err = |source| HistoryError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_err)?;
    conn.execute_batch(SCHEMA).map_err(open_err)?;
    Ok(conn)
}

impl History {
    /// Open (or create) `<dir>/history.sqlite3` and start its writer.
    pub fn open(dir: &Path, retention: Retention) -> Result<Arc<History>, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|source| HistoryError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("history.sqlite3");
        let writer = open(&path)?;
        let reader = open(&path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("berth-history".into())
            .spawn(move || write_loop(writer, rx, retention))
            .map_err(|source| HistoryError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Arc::new(History {
            tx,
            reader: Mutex::new(reader),
            dropped: std::sync::atomic::AtomicU64::new(0),
            path,
        }))
    }

    /// Read-only access for `berth history` (no writer).
    pub fn open_read_only(dir: &Path) -> Result<Connection, HistoryError> {
        let path = dir.join("history.sqlite3");
        Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| HistoryError::Open {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn enqueue(&self, w: Write) {
        if self.tx.try_send(w).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Remember a cycle (never waits).
    pub fn record_cycle(&self, row: CycleRow) {
        self.enqueue(Write::Cycle(row));
    }

    /// A drift episode begins (never waits).
    pub fn episode_started(&self, instance: &Instance, units: Vec<String>) {
        self.enqueue(Write::EpisodeStart {
            instance: instance.clone(),
            at: unix_now(),
            units,
        });
    }

    /// The open drift episode ends, `healed` or `cleared` (never waits).
    pub fn episode_ended(&self, instance: &Instance, by: &'static str) {
        self.enqueue(Write::EpisodeEnd {
            instance: instance.clone(),
            at: unix_now(),
            by,
        });
    }

    /// Store an instance's state and wait until it is committed.
    pub fn save_state(
        &self,
        instance: &Instance,
        state: &InstanceState,
    ) -> Result<(), HistoryError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx
            .send(Write::State {
                instance: instance.clone(),
                state: state.clone(),
                done: Some(done),
            })
            .map_err(|_| HistoryError::Stopped)?;
        match wait.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HistoryError::Write(e)),
            Err(_) => Err(HistoryError::Stopped),
        }
    }

    /// Store an instance's state without waiting (the controller's own
    /// settled/failed bookkeeping).
    pub fn save_state_later(&self, instance: &Instance, state: &InstanceState) {
        self.enqueue(Write::State {
            instance: instance.clone(),
            state: state.clone(),
            done: None,
        });
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HistoryError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&conn)?)
    }

    /// The instance's stored state (`None`: never stored).
    pub fn state(&self, instance: &Instance) -> Result<Option<InstanceState>, HistoryError> {
        self.read(|c| load_state(c, instance))
    }

    /// Cycles of `instance` (or of every instance of `app` when
    /// `destination` is `None`), newest first, with ids below `before`.
    pub fn cycles(
        &self,
        app: &str,
        destination: Option<&str>,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<CycleRow>, HistoryError> {
        self.read(|c| load_cycles(c, app, destination, limit, before))
    }

    pub fn episodes(
        &self,
        app: &str,
        destination: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EpisodeRow>, HistoryError> {
        self.read(|c| load_episodes(c, app, destination, limit))
    }

    /// Whether `revision` (a full id or a prefix of at least 7 hex digits)
    /// was deployed for the instance: the full id, if so.
    pub fn deployed_revision(
        &self,
        app: &str,
        revision: &str,
    ) -> Result<Option<String>, HistoryError> {
        if revision.len() < 7 || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        self.read(|c| {
            c.query_row(
                "SELECT revision FROM cycles WHERE app = ?1 AND result IN ('applied', 'in_sync') \
                 AND revision LIKE ?2 || '%' ORDER BY id DESC LIMIT 1",
                params![app, revision],
                |r| r.get(0),
            )
            .optional()
        })
    }
}

pub fn load_state(c: &Connection, instance: &Instance) -> rusqlite::Result<Option<InstanceState>> {
    c.query_row(
        "SELECT suspended, settled, failed, pinned FROM instances WHERE app = ?1 AND destination = ?2",
        params![instance.app, instance.destination],
        |r| {
            Ok(InstanceState {
                suspended: r.get::<_, i64>(0)? != 0,
                settled: r.get(1)?,
                failed: r.get(2)?,
                pinned: r.get(3)?,
            })
        },
    )
    .optional()
}

fn dest_of(d: String) -> Option<String> {
    Some(d).filter(|d| !d.is_empty())
}

pub fn load_cycles(
    c: &Connection,
    app: &str,
    destination: Option<&str>,
    limit: u32,
    before: Option<i64>,
) -> rusqlite::Result<Vec<CycleRow>> {
    let mut stmt = c.prepare(
        "SELECT id, app, destination, started_unix_ms, ended_unix_ms, trigger, revision, version, \
         result, error, actions, kind FROM cycles WHERE app = ?1 AND (?2 IS NULL OR destination = ?2) \
         AND id < ?3 ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            app,
            destination,
            before.unwrap_or(i64::MAX),
            limit.min(1000)
        ],
        |r| {
            let actions: String = r.get(10)?;
            Ok(CycleRow {
                id: r.get(0)?,
                app: r.get(1)?,
                destination: dest_of(r.get(2)?),
                started_unix_ms: r.get::<_, i64>(3)? as u64,
                ended_unix_ms: r.get::<_, i64>(4)? as u64,
                trigger: r.get(5)?,
                revision: r.get(6)?,
                version: r.get(7)?,
                result: r.get(8)?,
                kind: r.get(11)?,
                error: r.get(9)?,
                actions: serde_json::from_str(&actions).unwrap_or_default(),
            })
        },
    )?;
    rows.collect()
}

pub fn load_episodes(
    c: &Connection,
    app: &str,
    destination: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<EpisodeRow>> {
    let mut stmt = c.prepare(
        "SELECT id, app, destination, first_seen_unix, ended_unix, ended_by, units FROM episodes \
         WHERE app = ?1 AND (?2 IS NULL OR destination = ?2) ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![app, destination, limit.min(1000)], |r| {
        let units: String = r.get(6)?;
        Ok(EpisodeRow {
            id: r.get(0)?,
            app: r.get(1)?,
            destination: dest_of(r.get(2)?),
            first_seen_unix: r.get::<_, i64>(3)? as u64,
            ended_unix: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
            ended_by: r.get(5)?,
            units: serde_json::from_str(&units).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Write>, retention: Retention) {
    let mut writes = 0u64;
    while let Ok(w) = rx.recv() {
        let (result, done) = match w {
            Write::State {
                instance,
                state,
                done,
            } => (
                conn.execute(
                    "INSERT INTO instances (app, destination, suspended, settled, failed, pinned) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (app, destination) DO UPDATE SET \
                     suspended = ?3, settled = ?4, failed = ?5, pinned = ?6",
                    params![
                        instance.app,
                        instance.destination,
                        i64::from(state.suspended),
                        state.settled,
                        state.failed,
                        state.pinned
                    ],
                )
                .map(drop),
                done,
            ),
            Write::Cycle(row) => (
                conn.execute(
                    "INSERT INTO cycles (app, destination, started_unix_ms, ended_unix_ms, trigger, \
                     revision, version, result, error, actions, kind) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        row.app,
                        row.destination.unwrap_or_default(),
                        row.started_unix_ms as i64,
                        row.ended_unix_ms as i64,
                        row.trigger,
                        row.revision,
                        row.version,
                        row.result,
                        row.error,
                        serde_json::to_string(&row.actions).unwrap_or_else(|_| "[]".into()),
                        row.kind,
                    ],
                )
                .map(drop),
                None,
            ),
            Write::EpisodeStart {
                instance,
                at,
                units,
            } => (
                conn.execute(
                    "INSERT INTO episodes (app, destination, first_seen_unix, units) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        instance.app,
                        instance.destination,
                        at as i64,
                        serde_json::to_string(&units).unwrap_or_else(|_| "[]".into())
                    ],
                )
                .map(drop),
                None,
            ),
            Write::EpisodeEnd { instance, at, by } => (
                conn.execute(
                    "UPDATE episodes SET ended_unix = ?3, ended_by = ?4 \
                     WHERE app = ?1 AND destination = ?2 AND ended_unix IS NULL",
                    params![instance.app, instance.destination, at as i64, by],
                )
                .map(drop),
                None,
            ),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "cannot write the history");
        }
        if let Some(done) = done {
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
        writes += 1;
        if writes.is_multiple_of(100)
            && let Err(e) = prune(&mut conn, retention)
        {
            tracing::warn!(error = %e, "cannot prune the history");
        }
    }
}

/// Drop rows beyond the retention, per instance.
fn prune(conn: &mut Connection, retention: Retention) -> rusqlite::Result<()> {
    let oldest_ms = unix_now().saturating_sub(retention.max_age.as_secs()) * 1000;
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM cycles WHERE started_unix_ms < ?1",
        params![oldest_ms as i64],
    )?;
    tx.execute(
        "DELETE FROM cycles WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
         (PARTITION BY app, destination ORDER BY id DESC) AS n FROM cycles) WHERE n > ?1)",
        params![retention.max_cycles],
    )?;
    tx.execute(
        "DELETE FROM episodes WHERE first_seen_unix < ?1 AND ended_unix IS NOT NULL",
        params![(oldest_ms / 1000) as i64],
    )?;
    tx.execute(
        "DELETE FROM episodes WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
         (PARTITION BY app, destination ORDER BY id DESC) AS n FROM episodes) WHERE n > ?1)",
        params![retention.max_cycles],
    )?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(app: &str, n: u64) -> CycleRow {
        CycleRow {
            id: 0,
            app: app.into(),
            destination: None,
            started_unix_ms: unix_now() * 1000 + n,
            ended_unix_ms: unix_now() * 1000 + n + 5,
            trigger: "interval".into(),
            revision: Some(format!("{n:x}{}", "f".repeat(39))),
            version: Some(format!("v{n}")),
            result: "applied".into(),
            kind: "deployed".into(),
            error: None,
            actions: vec![ActionRow {
                unit: "web".into(),
                host: "10.0.0.1".into(),
                container: format!("demo-web-v{n}"),
                kind: "replace".into(),
                reason: "version".into(),
            }],
        }
    }

    /// Wait for the writer: a state save is acknowledged after everything
    /// queued before it.
    fn flush(h: &History) {
        h.save_state(&Instance::new("flush", None), &InstanceState::default())
            .unwrap();
    }

    #[test]
    fn cycles_state_and_episodes_survive_a_reopen_and_page_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let demo = Instance::new("demo", None);
        {
            let h = History::open(dir.path(), Retention::default()).unwrap();
            for n in 1..=5 {
                h.record_cycle(row("demo", n));
            }
            h.record_cycle(row("other", 9));
            h.episode_started(&demo, vec!["10.0.0.1 demo-web-v1 (state)".into()]);
            h.episode_ended(&demo, "healed");
            h.save_state(
                &demo,
                &InstanceState {
                    suspended: true,
                    settled: Some("a".repeat(40)),
                    failed: Some("b".repeat(40)),
                    pinned: None,
                },
            )
            .unwrap();
        }
        let h = History::open(dir.path(), Retention::default()).unwrap();
        let state = h.state(&demo).unwrap().unwrap();
        assert!(state.suspended);
        assert_eq!(state.failed, Some("b".repeat(40)));
        let page = h.cycles("demo", None, 2, None).unwrap();
        assert_eq!(
            page.iter()
                .map(|r| r.version.clone().unwrap())
                .collect::<Vec<_>>(),
            ["v5", "v4"]
        );
        assert_eq!(page[0].actions[0].container, "demo-web-v5");
        let next = h.cycles("demo", None, 10, Some(page[1].id)).unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(next[0].version.as_deref(), Some("v3"));
        let ep = h.episodes("demo", None, 10).unwrap();
        assert_eq!(ep.len(), 1);
        assert_eq!(ep[0].ended_by.as_deref(), Some("healed"));
        assert_eq!(
            h.deployed_revision("demo", &format!("3{}", "f".repeat(11)))
                .unwrap(),
            Some(format!("3{}", "f".repeat(39)))
        );
        assert_eq!(h.deployed_revision("demo", "zzzzzzz").unwrap(), None);
        assert_eq!(
            h.deployed_revision("other", &format!("3{}", "f".repeat(39)))
                .unwrap(),
            None
        );
        assert_eq!(h.state(&Instance::new("new", Some("eu"))).unwrap(), None);
    }

    #[test]
    fn retention_keeps_the_newest_rows_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(
            dir.path(),
            Retention {
                max_cycles: 10,
                max_age: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let mut old = row("demo", 0);
        old.started_unix_ms = 1000;
        h.record_cycle(old);
        for n in 1..=150 {
            h.record_cycle(row(if n % 2 == 0 { "demo" } else { "blog" }, n));
        }
        flush(&h);
        let demo = h.cycles("demo", None, 1000, None).unwrap();
        assert!(
            demo.len() <= 10 + 50,
            "pruned every 100 writes: {}",
            demo.len()
        );
        assert!(
            demo.iter().all(|r| r.started_unix_ms > 1000),
            "the old row is gone"
        );
        assert_eq!(demo[0].version.as_deref(), Some("v150"));
        assert!(!h.cycles("blog", None, 1000, None).unwrap().is_empty());
    }
}
