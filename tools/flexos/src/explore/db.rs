//! The results database (SQLite): one row per measured configuration,
//! keyed by the configuration's content and the workload, so an
//! interrupted exploration resumes and another exploration reuses what
//! was measured. Query it with `sqlite3 FILE 'select ...'` (docs/explore.md).

use super::enumerate::Candidate;
use super::model::Calls;
use super::search::{Outcome, Store};
use super::space::{Space, Workload};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::path::Path;

/// An open results database.
pub struct Db {
    conn: Connection,
    workload: String,
    app: String,
}

/// The workload as a stable text (part of every key): what is run and how often.
pub fn workload_key(space: &Space) -> String {
    let w = match &space.workload {
        Workload::RedisBenchmark { requests } => {
            format!("redis-benchmark -n {requests} -c 30 -P 16 -t get,set -d 3")
        }
        Workload::SqliteInsert { rows } => format!("sqlite-insert rows={rows}"),
        Workload::Synthetic(s) => format!("synthetic {s:?}"),
    };
    format!("{w}; runs={}", space.runs)
}

/// The key of a configuration under a workload: SHA-256 of both, the
/// configuration's comment lines left out.
pub fn key(workload: &str, config: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"flexos-explore-1\n");
    h.update(workload.as_bytes());
    h.update(b"\n");
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Db {
    /// Opens (creating if needed) the database at `path` for `space`'s workload.
    pub fn open(path: &Path, space: &Space) -> Result<Db, String> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(60)).map_err(|e| e.to_string())?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS measurement (
                 key TEXT PRIMARY KEY,
                 app TEXT NOT NULL,
                 workload TEXT NOT NULL,
                 config TEXT NOT NULL,
                 metrics TEXT NOT NULL,   -- JSON: metric -> [value per run]
                 error TEXT,
                 machine TEXT NOT NULL,
                 measured_at TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS gate_calls (
                 key TEXT PRIMARY KEY,
                 workload TEXT NOT NULL,
                 config TEXT NOT NULL,
                 calls TEXT NOT NULL      -- JSON: [[caller, callee, count]]
             );",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Db { conn, workload: workload_key(space), app: space.app.clone() })
    }

    /// Copies every row of the database at `other` that this one lacks.
    pub fn merge_from(&mut self, other: &Path) -> Result<usize, String> {
        let path = other.to_string_lossy().into_owned();
        self.conn.execute("ATTACH DATABASE ?1 AS other", params![path]).map_err(|e| format!("{path}: {e}"))?;
        let result = (|| {
            let a = self.conn.execute("INSERT OR IGNORE INTO measurement SELECT * FROM other.measurement", [])?;
            let b = self.conn.execute("INSERT OR IGNORE INTO gate_calls SELECT * FROM other.gate_calls", [])?;
            Ok::<usize, rusqlite::Error>(a + b)
        })();
        let _ = self.conn.execute("DETACH DATABASE other", []);
        result.map_err(|e| format!("{path}: {e}"))
    }

    /// How many measurements the database holds.
    pub fn len(&self) -> usize {
        self.conn.query_row("SELECT count(*) FROM measurement", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize
    }

    /// Whether the database holds no measurement.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for Db {
    fn outcome(&mut self, c: &Candidate) -> Option<Outcome> {
        let k = key(&self.workload, &c.toml);
        let row: Option<(String, Option<String>)> = self
            .conn
            .query_row("SELECT metrics, error FROM measurement WHERE key = ?1", params![k], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .ok()
            .flatten();
        let (metrics, error) = row?;
        Some(Outcome { metrics: serde_json::from_str(&metrics).ok()?, error })
    }

    fn keep(&mut self, c: &Candidate, o: &Outcome) -> Result<(), String> {
        let k = key(&self.workload, &c.toml);
        self.conn
            .execute(
                "INSERT OR REPLACE INTO measurement VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, datetime('now'))",
                params![
                    k,
                    self.app,
                    self.workload,
                    c.toml,
                    serde_json::to_string(&o.metrics).expect("metrics serialize"),
                    o.error,
                    crate::bench::machine_description()
                ],
            )
            .map(|_| ())
            .map_err(|e| format!("results database: {e}"))
    }

    fn calls(&mut self, baseline: &Candidate) -> Option<Calls> {
        let k = key(&self.workload, &baseline.toml);
        let text: String = self
            .conn
            .query_row("SELECT calls FROM gate_calls WHERE key = ?1", params![k], |r| r.get(0))
            .optional()
            .ok()
            .flatten()?;
        serde_json::from_str(&text).ok()
    }

    fn keep_calls(&mut self, baseline: &Candidate, calls: &Calls) -> Result<(), String> {
        let k = key(&self.workload, &baseline.toml);
        self.conn
            .execute(
                "INSERT OR REPLACE INTO gate_calls VALUES (?1, ?2, ?3, ?4)",
                params![k, self.workload, baseline.toml, serde_json::to_string(calls).expect("calls serialize")],
            )
            .map(|_| ())
            .map_err(|e| format!("results database: {e}"))
    }
}
