//! The CP's data access. Every config write runs in one transaction that also bumps
//! the config revision; the DP heartbeat writes `instances` and nothing else, so
//! the upgrader's write-freeze guard can ignore that one table.

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row, Transaction};

use crate::model::{Plugin, Route};

pub struct Store {
    /// Writes need `&mut Client` for transactions; one at a time is plenty.
    writer: Mutex<Client>,
    /// Reads and heartbeats, pipelined on a second connection so they never wait
    /// behind an admin write.
    reader: Client,
    level: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {doing}")]
    Db {
        doing: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored route {id:?} has unreadable plugins: {reason}")]
    Corrupt { id: String, reason: String },
}

fn db(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| {
        if source.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            let detail = source
                .as_db_error()
                .and_then(|e| e.detail())
                .unwrap_or("a unique key is taken")
                .to_owned();
            StoreError::Conflict(detail)
        } else {
            StoreError::Db { doing, source }
        }
    }
}

/// A DP's heartbeat, as it posts it to `/dp/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub instance_id: String,
    pub version: String,
    pub config_revision: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    pub instance_id: String,
    pub version: String,
    pub config_revision: i64,
    /// RFC 3339, UTC.
    pub last_seen: String,
    pub seconds_since_seen: f64,
}

impl Store {
    pub fn new(writer: Client, reader: Client, level: u32) -> Store {
        Store {
            writer: Mutex::new(writer),
            reader,
            level,
        }
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    fn select_routes(&self) -> String {
        // Before migration 2 there is no description column to read.
        let description = if self.level >= 2 {
            "r.description"
        } else {
            "NULL::text"
        };
        format!(
            "SELECT c.revision, r.id, r.path_prefix, r.upstream, r.plugins::text, {description}
             FROM config_revision c LEFT JOIN routes r ON true"
        )
    }

    pub async fn revision(&self) -> Result<i64, StoreError> {
        let row = self
            .reader
            .query_one("SELECT revision FROM config_revision", &[])
            .await
            .map_err(db("reading the config revision"))?;
        Ok(row.get(0))
    }

    /// The revision and every route (sorted by id), read in one statement so they
    /// belong together.
    pub async fn snapshot(&self) -> Result<(i64, Vec<Route>), StoreError> {
        let rows = self
            .reader
            .query(&self.select_routes(), &[])
            .await
            .map_err(db("reading the config"))?;
        let revision = rows.first().map(|row| row.get(0)).unwrap_or(0);
        let mut routes = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(1).is_some())
            .map(route_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        routes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((revision, routes))
    }

    pub async fn route(&self, id: &str) -> Result<Option<Route>, StoreError> {
        let sql = format!("{} WHERE r.id = $1", self.select_routes());
        let row = self
            .reader
            .query_opt(&sql, &[&id])
            .await
            .map_err(db("reading a route"))?;
        row.as_ref().map(route_from_row).transpose()
    }

    /// Inserts (or with `replace`, upserts) a route; returns whether it was new
    /// and the new revision.
    pub async fn put(&self, route: &Route, replace: bool) -> Result<(bool, i64), StoreError> {
        let mut writer = self.writer.lock().await;
        let tx = writer.transaction().await.map_err(db("starting a write"))?;
        let created = insert_route(&tx, route, self.level, replace).await?;
        if !created && !replace {
            return Err(StoreError::Conflict(format!(
                "route {:?} already exists",
                route.id
            )));
        }
        let verb = if created { "create" } else { "update" };
        let revision = bump(&tx, self.level, &format!("{verb} route {}", route.id)).await?;
        tx.commit().await.map_err(db("committing a route write"))?;
        Ok((created, revision))
    }

    /// Deletes a route; `None` when there was no such route.
    pub async fn delete(&self, id: &str) -> Result<Option<i64>, StoreError> {
        let mut writer = self.writer.lock().await;
        let tx = writer.transaction().await.map_err(db("starting a write"))?;
        let deleted = tx
            .execute("DELETE FROM routes WHERE id = $1", &[&id])
            .await
            .map_err(db("deleting a route"))?;
        if deleted == 0 {
            return Ok(None);
        }
        let revision = bump(&tx, self.level, &format!("delete route {id}")).await?;
        tx.commit().await.map_err(db("committing a delete"))?;
        Ok(Some(revision))
    }

    /// Replaces the whole config (import) in one transaction.
    pub async fn replace_all(&self, routes: &[Route]) -> Result<i64, StoreError> {
        let mut writer = self.writer.lock().await;
        let tx = writer
            .transaction()
            .await
            .map_err(db("starting an import"))?;
        tx.execute("DELETE FROM routes", &[])
            .await
            .map_err(db("clearing routes for an import"))?;
        for route in routes {
            insert_route(&tx, route, self.level, false).await?;
        }
        let revision = bump(&tx, self.level, &format!("import {} routes", routes.len())).await?;
        tx.commit().await.map_err(db("committing an import"))?;
        Ok(revision)
    }

    /// Records a DP heartbeat: one upsert into `instances`, nothing else.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), StoreError> {
        let sql = if self.level >= 3 {
            "INSERT INTO instances (instance_id, version, config_revision, last_seen, first_seen)
             VALUES ($1, $2, $3, now(), now())
             ON CONFLICT (instance_id) DO UPDATE SET version = EXCLUDED.version,
               config_revision = EXCLUDED.config_revision, last_seen = now()"
        } else {
            "INSERT INTO instances (instance_id, version, config_revision, last_seen)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (instance_id) DO UPDATE SET version = EXCLUDED.version,
               config_revision = EXCLUDED.config_revision, last_seen = now()"
        };
        self.reader
            .execute(
                sql,
                &[&beat.instance_id, &beat.version, &beat.config_revision],
            )
            .await
            .map_err(db("recording a heartbeat"))?;
        Ok(())
    }

    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT instance_id, version, config_revision,
                   to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                   extract(epoch FROM now() - last_seen)::float8
                 FROM instances ORDER BY instance_id",
                &[],
            )
            .await
            .map_err(db("listing instances"))?;
        Ok(rows
            .iter()
            .map(|row| InstanceRow {
                instance_id: row.get(0),
                version: row.get(1),
                config_revision: row.get(2),
                last_seen: row.get(3),
                seconds_since_seen: row.get(4),
            })
            .collect())
    }
}

fn route_from_row(row: &Row) -> Result<Route, StoreError> {
    let id: String = row.get(1);
    let plugins_text: String = row.get(4);
    let plugins: Vec<Plugin> =
        serde_json::from_str(&plugins_text).map_err(|e| StoreError::Corrupt {
            id: id.clone(),
            reason: e.to_string(),
        })?;
    Ok(Route {
        id,
        path_prefix: row.get(2),
        upstream: row.get(3),
        description: row.get(5),
        plugins,
    })
}

/// Returns true when the route was inserted, false when it existed (and, with
/// `replace`, was updated).
async fn insert_route(
    tx: &Transaction<'_>,
    route: &Route,
    level: u32,
    replace: bool,
) -> Result<bool, StoreError> {
    let plugins = serde_json::to_string(&route.plugins).unwrap_or_else(|_| "[]".into());
    let conflict = if replace {
        "DO UPDATE SET path_prefix = EXCLUDED.path_prefix, upstream = EXCLUDED.upstream,
           plugins = EXCLUDED.plugins, updated_at = now()"
    } else {
        "DO NOTHING"
    };
    // `xmax = 0` holds for a freshly inserted row, not for an updated one.
    let row = if level >= 2 {
        let sql = format!(
            "INSERT INTO routes (id, path_prefix, upstream, plugins, description)
             VALUES ($1, $2, $3, $4::text::jsonb, $5) ON CONFLICT (id) {}
             RETURNING (xmax = 0)",
            conflict.replace(
                "updated_at",
                "description = EXCLUDED.description, updated_at"
            )
        );
        tx.query_opt(
            &sql,
            &[
                &route.id,
                &route.path_prefix,
                &route.upstream,
                &plugins,
                &route.description,
            ],
        )
        .await
    } else {
        let sql = format!(
            "INSERT INTO routes (id, path_prefix, upstream, plugins)
             VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT (id) {conflict}
             RETURNING (xmax = 0)"
        );
        tx.query_opt(
            &sql,
            &[&route.id, &route.path_prefix, &route.upstream, &plugins],
        )
        .await
    };
    let row = row.map_err(db("writing a route"))?;
    // DO NOTHING returns no row when the id existed.
    Ok(row.is_some_and(|row| row.get::<_, bool>(0)))
}

async fn bump(tx: &Transaction<'_>, level: u32, change: &str) -> Result<i64, StoreError> {
    let revision: i64 = tx
        .query_one(
            "UPDATE config_revision SET revision = revision + 1 RETURNING revision",
            &[],
        )
        .await
        .map_err(db("bumping the config revision"))?
        .get(0);
    if level >= 3 {
        tx.execute(
            "INSERT INTO config_history (revision, change) VALUES ($1, $2)",
            &[&revision, &change],
        )
        .await
        .map_err(db("recording config history"))?;
    }
    Ok(revision)
}
