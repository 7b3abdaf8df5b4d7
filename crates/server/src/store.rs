//! The appliance's database: one SQLite file, `metalcast.db` in the data directory.
//!
//! WAL journal so API reads do not wait for the lease writer; `synchronous = FULL` so a
//! committed lease survives a power cut (the lease writer batches, so this costs one fsync
//! per batch, not per lease). Queries are checked at run time, so builds need no database.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use metalcast_proto::layout::BlockTree;
use metalcast_proto::{
    Credentials, Event, Hardware, Level, MacAddr, Node, NodeSettings, NodeState, Phase,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::auth::Principal;
use crate::token::{RandomError, Token, TokenHash};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "metalcast.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating data directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    #[error("corrupt row in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("making a token")]
    Random(#[from] RandomError),
}

/// A DHCP lease as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub expires_unix: i64,
    pub hostname: Option<String>,
}

/// One write of a batch; see [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    LeaseBound(StoredLease),
    LeaseReleased { mac: MacAddr, ip: Ipv4Addr },
    Event(Event),
}

/// Handle to the database. Cheap to clone (a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Open (creating if missing) `data_dir/metalcast.db` and bring its schema up to date.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path, source })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(Store { pool })
    }

    /// Make an admin token; the clear text is returned once and only its hash is kept.
    pub async fn create_admin_token(&self, name: &str, now_ms: i64) -> Result<Token, StoreError> {
        let token = Token::generate()?;
        sqlx::query("INSERT INTO admin_tokens (name, hash, created_ms) VALUES (?, ?, ?)")
            .bind(name)
            .bind(token.hash().as_bytes().as_slice())
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// Who a presented bearer token belongs to, if anyone.
    ///
    /// Admin tokens are few: every stored hash is compared in constant time, without stopping
    /// at the first match. Node tokens are looked up by their hash; the index comparison is not
    /// constant time, but it compares the BLAKE3 digest of what the client sent, which a client
    /// cannot steer byte by byte, so its timing reveals nothing about stored tokens.
    pub async fn principal(&self, presented: &str) -> Result<Option<Principal>, StoreError> {
        let hash = TokenHash::of(presented);
        let admins = sqlx::query("SELECT name, hash FROM admin_tokens")
            .fetch_all(&self.pool)
            .await?;
        let mut admin = None;
        for row in &admins {
            let stored: Vec<u8> = row.try_get("hash")?;
            let matches = TokenHash::from_slice(&stored).is_some_and(|h| h == hash);
            if matches && admin.is_none() {
                admin = Some(Principal::Admin {
                    name: row.try_get("name")?,
                });
            }
        }
        if admin.is_some() {
            return Ok(admin);
        }
        let row = sqlx::query("SELECT mac FROM node_tokens WHERE hash = ?")
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(Principal::Node(mac_column(&row, "node_tokens")?))),
            None => Ok(None),
        }
    }

    /// A new per-boot token for `mac`, replacing the one it had.
    pub async fn issue_node_token(&self, mac: MacAddr, now_ms: i64) -> Result<Token, StoreError> {
        let token = Token::generate()?;
        sqlx::query(
            "INSERT INTO node_tokens (mac, hash, issued_ms) VALUES (?, ?, ?) \
             ON CONFLICT (mac) DO UPDATE SET hash = excluded.hash, issued_ms = excluded.issued_ms",
        )
        .bind(mac.to_string())
        .bind(token.hash().as_bytes().as_slice())
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Forget the node's token (it boots its local disk and needs none).
    pub async fn revoke_node_token(&self, mac: MacAddr) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM node_tokens WHERE mac = ?")
            .bind(mac.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Mark the node seen now, creating it as `discovered` if it is new.
    /// Returns the node and whether it was created.
    pub async fn touch_node(&self, mac: MacAddr, now_ms: i64) -> Result<(Node, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO nodes (mac, state, first_seen_ms, last_seen_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (mac) DO NOTHING",
        )
        .bind(mac.to_string())
        .bind(NodeState::Discovered.as_str())
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !created {
            sqlx::query("UPDATE nodes SET last_seen_ms = MAX(last_seen_ms, ?) WHERE mac = ?")
                .bind(now_ms)
                .bind(mac.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let node = written_node(&mut tx, mac).await?;
        tx.commit().await?;
        Ok((node, created))
    }

    /// Store the hardware the agent reported; creates the node if the appliance never saw it.
    pub async fn register(
        &self,
        mac: MacAddr,
        hardware: &Hardware,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let json = serde_json::to_string(hardware).map_err(|e| StoreError::Corrupt {
            table: "nodes",
            detail: format!("hardware does not encode as JSON: {e}"),
        })?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO nodes (mac, state, hardware, first_seen_ms, last_seen_ms) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (mac) DO UPDATE SET hardware = excluded.hardware, \
             last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
        )
        .bind(mac.to_string())
        .bind(NodeState::Discovered.as_str())
        .bind(json)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let node = written_node(&mut tx, mac).await?;
        tx.commit().await?;
        Ok(node)
    }

    /// Update `last_seen_ms` of an existing node; `false` if there is no such node.
    pub async fn mark_seen(&self, mac: MacAddr, now_ms: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE nodes SET last_seen_ms = MAX(last_seen_ms, ?) WHERE mac = ?")
                .bind(now_ms)
                .bind(mac.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// `None` if there is no such node.
    pub async fn set_state(
        &self,
        mac: MacAddr,
        state: NodeState,
    ) -> Result<Option<Node>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE nodes SET state = ? WHERE mac = ?")
            .bind(state.as_str())
            .bind(mac.to_string())
            .execute(&mut *tx)
            .await?;
        let node = node_in(&mut tx, mac).await?;
        tx.commit().await?;
        Ok(node)
    }

    /// Applies the fields that are set, creating the node (as `discovered`) if it is new, so
    /// an operator can enrol a MAC before the machine first boots.
    pub async fn update_node(
        &self,
        mac: MacAddr,
        settings: &NodeSettings,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO nodes (mac, state, first_seen_ms, last_seen_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (mac) DO NOTHING",
        )
        .bind(mac.to_string())
        .bind(NodeState::Discovered.as_str())
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        // An empty hash or key list clears the column; an absent one leaves it.
        let keys = settings
            .ssh_authorized_keys
            .as_ref()
            .map(|keys| match keys.as_slice() {
                [] => Ok(String::new()),
                _ => serde_json::to_string(keys),
            })
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                table: "nodes",
                detail: format!("SSH keys do not encode as JSON: {e}"),
            })?;
        sqlx::query(
            "UPDATE nodes SET hostname = COALESCE(?1, hostname), layout = COALESCE(?2, layout), \
             image = COALESCE(?3, image), state = COALESCE(?4, state), \
             root_password_hash = CASE WHEN ?5 IS NULL THEN root_password_hash \
             ELSE NULLIF(?5, '') END, \
             ssh_authorized_keys = CASE WHEN ?6 IS NULL THEN ssh_authorized_keys \
             ELSE NULLIF(?6, '') END \
             WHERE mac = ?7",
        )
        .bind(settings.hostname.as_deref())
        .bind(settings.layout.as_deref())
        .bind(settings.image.as_deref())
        .bind(settings.state.map(NodeState::as_str))
        .bind(settings.root_password_hash.as_deref())
        .bind(keys)
        .bind(mac.to_string())
        .execute(&mut *tx)
        .await?;
        let node = written_node(&mut tx, mac).await?;
        tx.commit().await?;
        Ok(node)
    }

    /// Stores the block tree the agent reported; `false` if there is no such node.
    pub async fn set_block_tree(&self, mac: MacAddr, tree: &BlockTree) -> Result<bool, StoreError> {
        let json = serde_json::to_string(tree).map_err(|e| StoreError::Corrupt {
            table: "nodes",
            detail: format!("block tree does not encode as JSON: {e}"),
        })?;
        let done = sqlx::query("UPDATE nodes SET block_tree = ? WHERE mac = ?")
            .bind(json)
            .bind(mac.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn block_tree(&self, mac: MacAddr) -> Result<Option<BlockTree>, StoreError> {
        let json: Option<Option<String>> =
            sqlx::query_scalar("SELECT block_tree FROM nodes WHERE mac = ?")
                .bind(mac.to_string())
                .fetch_optional(&self.pool)
                .await?;
        json.flatten()
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                table: "nodes",
                detail: format!("block tree JSON: {e}"),
            })
    }

    pub async fn node(&self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let node = node_in(&mut tx, mac).await?;
        tx.commit().await?;
        Ok(node)
    }

    /// What the node's installed system lets in: root's hash and keys.
    pub async fn credentials(&self, mac: MacAddr) -> Result<Credentials, StoreError> {
        let row =
            sqlx::query("SELECT root_password_hash, ssh_authorized_keys FROM nodes WHERE mac = ?")
                .bind(mac.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(Credentials::default());
        };
        Ok(Credentials {
            root_password_hash: row.try_get("root_password_hash")?,
            ssh_authorized_keys: keys_column(&row)?,
        })
    }

    /// All nodes, ordered by MAC.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query(&format!("{NODE_SELECT} ORDER BY n.mac"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_from_row).collect()
    }

    pub async fn known_macs(&self) -> Result<Vec<MacAddr>, StoreError> {
        let rows = sqlx::query("SELECT mac FROM nodes ORDER BY mac")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| mac_column(r, "nodes")).collect()
    }

    pub async fn add_event(&self, event: &Event) -> Result<(), StoreError> {
        insert_event(&self.pool, event).await
    }

    /// Removes the events stamped before `before_ms`, a batch per transaction so that the
    /// boot services' writes never wait long behind it; returns how many went.
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        const BATCH: i64 = 10_000;
        let mut removed = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at_ms < ? LIMIT ?)",
            )
            .bind(before_ms)
            .bind(BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            removed += done;
            if done < BATCH as u64 {
                return Ok(removed);
            }
        }
    }

    /// The events of one MAC, oldest first.
    pub async fn events(&self, mac: MacAddr) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT mac, phase, level, message, at_ms FROM events WHERE mac = ? ORDER BY id",
        )
        .bind(mac.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn leases(&self) -> Result<Vec<StoredLease>, StoreError> {
        let rows = sqlx::query("SELECT mac, ip, expires_unix, hostname FROM leases ORDER BY ip")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let ip: String = row.try_get("ip")?;
                Ok(StoredLease {
                    mac: mac_column(row, "leases")?,
                    ip: ip.parse().map_err(|_| StoreError::Corrupt {
                        table: "leases",
                        detail: format!("ip {ip:?} is not an IPv4 address"),
                    })?,
                    expires_unix: row.try_get("expires_unix")?,
                    hostname: row.try_get("hostname")?,
                })
            })
            .collect()
    }

    /// The version of image `name` that nodes following "latest" get.
    pub async fn image_latest(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM image_latest WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Points "latest" of image `name` at `version`; with `only_if_unset`, leaves an existing
    /// pointer alone. Returns whether the pointer changed.
    pub async fn set_image_latest(
        &self,
        name: &str,
        version: &str,
        only_if_unset: bool,
    ) -> Result<bool, StoreError> {
        let sql = if only_if_unset {
            "INSERT INTO image_latest (name, version) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
        } else {
            "INSERT INTO image_latest (name, version) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version \
             WHERE version != excluded.version"
        };
        let done = sqlx::query(sql)
            .bind(name)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Apply writes in order, in one transaction (one fsync for the whole batch).
    pub async fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for write in writes {
            match write {
                Write::LeaseBound(lease) => {
                    // A lease that expired without a release may still hold this address
                    // under another MAC; the DHCP server has reused it, so it is gone.
                    sqlx::query("DELETE FROM leases WHERE ip = ? AND mac != ?")
                        .bind(lease.ip.to_string())
                        .bind(lease.mac.to_string())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO leases (mac, ip, expires_unix, hostname) VALUES (?, ?, ?, ?) \
                         ON CONFLICT (mac) DO UPDATE SET ip = excluded.ip, \
                         expires_unix = excluded.expires_unix, hostname = excluded.hostname",
                    )
                    .bind(lease.mac.to_string())
                    .bind(lease.ip.to_string())
                    .bind(lease.expires_unix)
                    .bind(lease.hostname.as_deref())
                    .execute(&mut *tx)
                    .await?;
                }
                Write::LeaseReleased { mac, ip } => {
                    sqlx::query("DELETE FROM leases WHERE mac = ? AND ip = ?")
                        .bind(mac.to_string())
                        .bind(ip.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                Write::Event(event) => insert_event(&mut *tx, event).await?,
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

const NODE_SELECT: &str = "SELECT n.mac, n.state, n.hostname, n.hardware, n.layout, n.image, \
     n.root_password_hash IS NOT NULL AS root_password_set, n.ssh_authorized_keys, n.first_seen_ms, n.last_seen_ms, l.ip FROM nodes n LEFT JOIN leases l ON l.mac = n.mac";

async fn node_in(
    tx: &mut Transaction<'_, Sqlite>,
    mac: MacAddr,
) -> Result<Option<Node>, StoreError> {
    let row = sqlx::query(&format!("{NODE_SELECT} WHERE n.mac = ?"))
        .bind(mac.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(node_from_row).transpose()
}

/// The node a transaction has just written; missing means the database is broken.
async fn written_node(tx: &mut Transaction<'_, Sqlite>, mac: MacAddr) -> Result<Node, StoreError> {
    node_in(tx, mac).await?.ok_or(StoreError::Corrupt {
        table: "nodes",
        detail: format!("node {mac} vanished inside its own transaction"),
    })
}

async fn insert_event<'e, E>(executor: E, event: &Event) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query("INSERT INTO events (mac, phase, level, message, at_ms) VALUES (?, ?, ?, ?, ?)")
        .bind(event.mac.to_string())
        .bind(event.phase.as_str())
        .bind(level_str(event.level))
        .bind(&event.message)
        .bind(event.at_ms)
        .execute(executor)
        .await?;
    Ok(())
}

fn level_str(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

fn mac_column(row: &SqliteRow, table: &'static str) -> Result<MacAddr, StoreError> {
    let text: String = row.try_get("mac")?;
    MacAddr::from_str(&text).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn keys_column(row: &SqliteRow) -> Result<Vec<String>, StoreError> {
    let json: Option<String> = row.try_get("ssh_authorized_keys")?;
    let keys = json.map(|json| serde_json::from_str(&json)).transpose();
    keys.map(Option::unwrap_or_default)
        .map_err(|e| StoreError::Corrupt {
            table: "nodes",
            detail: format!("SSH keys JSON: {e}"),
        })
}

fn node_from_row(row: &SqliteRow) -> Result<Node, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "nodes",
        detail,
    };
    let state: String = row.try_get("state")?;
    let hardware: Option<String> = row.try_get("hardware")?;
    Ok(Node {
        mac: mac_column(row, "nodes")?,
        state: state.parse().map_err(corrupt)?,
        hostname: row.try_get("hostname")?,
        ip: row.try_get("ip")?,
        hardware: hardware
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| corrupt(format!("hardware JSON: {e}")))?,
        layout: row.try_get("layout")?,
        image: row.try_get("image")?,
        root_password_set: row.try_get("root_password_set")?,
        ssh_authorized_keys: keys_column(row)?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "events",
        detail,
    };
    let phase: String = row.try_get("phase")?;
    let level: String = row.try_get("level")?;
    Ok(Event {
        mac: mac_column(row, "events")?,
        phase: parse_snake::<Phase>(&phase).map_err(corrupt)?,
        level: parse_snake::<Level>(&level).map_err(corrupt)?,
        message: row.try_get("message")?,
        at_ms: row.try_get("at_ms")?,
    })
}

/// Parse a unit enum from the snake_case name serde gives it.
fn parse_snake<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| format!("unknown value {name:?}"))
}

#[cfg(test)]
mod tests {
    use metalcast_proto::{Cpu, Dmi, Firmware};

    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn hardware() -> Hardware {
        Hardware {
            firmware: Firmware::Bios,
            cpu: Cpu {
                count: 2,
                model: None,
            },
            memory_bytes: 1 << 30,
            disks: vec![],
            nics: vec![],
            dmi: Dmi::default(),
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn open_creates_the_file_in_wal_mode_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sub/data");
        let store = Store::open(&data).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        store.touch_node(mac("52:54:00:00:00:01"), 5).await.unwrap();
        drop(store);
        assert!(data.join(DB_FILE).is_file());
        let again = Store::open(&data).await.unwrap();
        assert_eq!(
            again.known_macs().await.unwrap(),
            vec![mac("52:54:00:00:00:01")]
        );
    }

    #[tokio::test]
    async fn pruning_removes_only_events_older_than_the_cutoff() {
        let (_dir, store) = store().await;
        let (a, b) = (mac("52:54:00:00:00:0a"), mac("52:54:00:00:00:0b"));
        for (m, at_ms) in [(a, 10), (b, 20), (a, 30), (a, 40)] {
            let event = Event {
                mac: m,
                phase: Phase::Dhcp,
                level: Level::Info,
                message: format!("at {at_ms}"),
                at_ms,
            };
            store.add_event(&event).await.unwrap();
        }
        assert_eq!(store.prune_events(30).await.unwrap(), 2);
        let left: Vec<i64> = store
            .events(a)
            .await
            .unwrap()
            .iter()
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(left, [30, 40]);
        assert!(store.events(b).await.unwrap().is_empty());
        assert_eq!(store.prune_events(30).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn touch_creates_once_then_updates_last_seen() {
        let (_dir, store) = store().await;
        let m = mac("52:54:00:00:00:01");
        let (node, created) = store.touch_node(m, 100).await.unwrap();
        assert!(created);
        assert_eq!(node.state, NodeState::Discovered);
        assert_eq!((node.first_seen_ms, node.last_seen_ms), (100, 100));
        let (node, created) = store.touch_node(m, 250).await.unwrap();
        assert!(!created);
        assert_eq!((node.first_seen_ms, node.last_seen_ms), (100, 250));
    }

    #[tokio::test]
    async fn register_state_and_listing() {
        let (_dir, store) = store().await;
        let a = mac("52:54:00:00:00:0a");
        let b = mac("52:54:00:00:00:0b");
        store.touch_node(b, 1).await.unwrap();
        let node = store.register(a, &hardware(), 7).await.unwrap();
        assert_eq!(node.hardware, Some(hardware()));
        assert_eq!(node.state, NodeState::Discovered);
        let node = store
            .set_state(a, NodeState::Provisioned)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(node.state, NodeState::Provisioned);
        assert!(
            store
                .set_state(mac("00:00:00:00:00:01"), NodeState::Provisioned)
                .await
                .unwrap()
                .is_none()
        );
        let all: Vec<MacAddr> = store.nodes().await.unwrap().iter().map(|n| n.mac).collect();
        assert_eq!(all, vec![a, b]);
        assert!(store.mark_seen(b, 9).await.unwrap());
        assert!(!store.mark_seen(mac("00:00:00:00:00:02"), 9).await.unwrap());
    }

    #[tokio::test]
    async fn tokens_resolve_to_their_owner_and_are_replaced() {
        let (_dir, store) = store().await;
        let admin = store.create_admin_token("ops", 1).await.unwrap();
        let a = mac("52:54:00:00:00:0a");
        let first = store.issue_node_token(a, 2).await.unwrap();
        assert_eq!(
            store.principal(admin.as_str()).await.unwrap(),
            Some(Principal::Admin { name: "ops".into() })
        );
        assert_eq!(
            store.principal(first.as_str()).await.unwrap(),
            Some(Principal::Node(a))
        );
        let second = store.issue_node_token(a, 3).await.unwrap();
        assert_eq!(store.principal(first.as_str()).await.unwrap(), None);
        assert_eq!(
            store.principal(second.as_str()).await.unwrap(),
            Some(Principal::Node(a))
        );
        store.revoke_node_token(a).await.unwrap();
        assert_eq!(store.principal(second.as_str()).await.unwrap(), None);
        assert_eq!(store.principal("").await.unwrap(), None);
        // Only hashes are stored.
        let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM admin_tokens")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, vec![admin.hash().as_bytes().to_vec()]);
    }

    #[tokio::test]
    async fn events_in_order_per_mac() {
        let (_dir, store) = store().await;
        let a = mac("52:54:00:00:00:0a");
        let ev = |m: MacAddr, phase: Phase, at_ms: i64| Event {
            mac: m,
            phase,
            level: Level::Info,
            message: format!("{phase} at {at_ms}"),
            at_ms,
        };
        store.add_event(&ev(a, Phase::Dhcp, 1)).await.unwrap();
        store
            .add_event(&ev(mac("52:54:00:00:00:0b"), Phase::Dhcp, 2))
            .await
            .unwrap();
        store.add_event(&ev(a, Phase::IpxeScript, 3)).await.unwrap();
        let got = store.events(a).await.unwrap();
        assert_eq!(
            got,
            vec![ev(a, Phase::Dhcp, 1), ev(a, Phase::IpxeScript, 3)]
        );
    }

    #[tokio::test]
    async fn image_latest_pointer() {
        let (_dir, store) = store().await;
        assert_eq!(store.image_latest("deb").await.unwrap(), None);
        assert!(store.set_image_latest("deb", "1", true).await.unwrap());
        assert!(!store.set_image_latest("deb", "2", true).await.unwrap());
        assert_eq!(
            store.image_latest("deb").await.unwrap().as_deref(),
            Some("1")
        );
        assert!(store.set_image_latest("deb", "2", false).await.unwrap());
        assert!(!store.set_image_latest("deb", "2", false).await.unwrap());
        assert_eq!(
            store.image_latest("deb").await.unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(store.image_latest("other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn lease_batches_keep_one_lease_per_mac_and_ip() {
        let (_dir, store) = store().await;
        let a = mac("52:54:00:00:00:0a");
        let b = mac("52:54:00:00:00:0b");
        let lease = |m: MacAddr, ip: [u8; 4], exp: i64| StoredLease {
            mac: m,
            ip: Ipv4Addr::from(ip),
            expires_unix: exp,
            hostname: None,
        };
        store
            .apply(&[
                Write::LeaseBound(lease(a, [10, 0, 0, 10], 100)),
                Write::LeaseBound(lease(a, [10, 0, 0, 10], 200)),
                Write::LeaseBound(lease(b, [10, 0, 0, 11], 100)),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.leases().await.unwrap(),
            vec![lease(a, [10, 0, 0, 10], 200), lease(b, [10, 0, 0, 11], 100)]
        );
        // a's lease expired silently and the address went to b.
        store
            .apply(&[
                Write::LeaseReleased {
                    mac: b,
                    ip: Ipv4Addr::new(10, 0, 0, 11),
                },
                Write::LeaseBound(lease(b, [10, 0, 0, 10], 300)),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.leases().await.unwrap(),
            vec![lease(b, [10, 0, 0, 10], 300)]
        );
        store.touch_node(b, 1).await.unwrap();
        assert_eq!(
            store.node(b).await.unwrap().unwrap().ip.as_deref(),
            Some("10.0.0.10")
        );
    }
}
