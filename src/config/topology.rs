//! `[clusters]`, `[databases]` and `[users]`: where each client-facing database name lives, with
//! per-database and per-user pool settings and limits (PgBouncer's meanings).
//!
//! The cluster `default` is `[primary]` plus `[[replicas]]`; without a `[databases]` section every
//! client database name goes to it under the same name (as if `[databases."*"]` were empty).

use serde::{Deserialize, Serialize};

use super::{BackendConfig, Config, Dur, PoolMode};

/// The name of the cluster made of `[primary]` and `[[replicas]]`.
pub const DEFAULT_CLUSTER: &str = "default";

/// The `[databases]` entry that serves any name not listed, under the same name on the server.
pub const ANY_DATABASE: &str = "*";

/// `[clusters.NAME]`: a set of PostgreSQL hosts, one primary and its streaming replicas.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ClusterConfig {
    /// `host[:port]` entries or postgres:// URLs (a libpq multi-host URL names several hosts).
    /// The first is the primary as declared; with `role_discovery` the nodes' own reports decide.
    pub hosts: Vec<String>,
}

/// `[databases.NAME]`: a client-facing database name.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct DatabaseConfig {
    /// The cluster serving it (`default`: `[primary]` and `[[replicas]]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The database name on the server; absent: the client-facing name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// Server connections log in as this role whoever the client is (PgBouncer's forced user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The forced user's password when it is not a configured user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Overrides `default_pool_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// Overrides `min_pool_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_pool_size: Option<usize>,
    /// Overrides `reserve_pool_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve_pool_size: Option<usize>,
    /// Overrides `pool_mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    /// Overrides `server_lifetime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_lifetime: Option<Dur>,
    /// Overrides `query_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_timeout: Option<Dur>,
    /// Overrides `[proxy] max_db_connections` for this database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_db_connections: Option<usize>,
    /// Overrides `[proxy] max_db_client_connections` for this database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_db_client_connections: Option<usize>,
}

/// `[users.NAME]`: per-user pool settings and limits (who may log in is `[auth]`'s business).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct UserSettings {
    /// Overrides the database's pool mode for this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    /// Overrides the database's pool size for this user's pools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// Overrides the database's `query_timeout` for this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_timeout: Option<Dur>,
    /// Overrides `[proxy] max_user_connections` for this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_user_connections: Option<usize>,
    /// Overrides `[proxy] max_user_client_connections` for this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_user_client_connections: Option<usize>,
}

/// Parses a cluster's `hosts` into backends: `host[:port]` or postgres:// URLs, multi-host allowed.
pub fn parse_hosts(items: &[String]) -> Result<Vec<BackendConfig>, String> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let parsed = if item.contains("://") {
            super::env::parse_hosts_url(item)
        } else {
            super::env::parse_host_port(&format!("postgres://{item}")).map(|hp| vec![hp])
        };
        // A URL may hold a password: name the position, not the text.
        let Some(list) = parsed else {
            return Err(format!("hosts entry {} is not host[:port] or a postgres:// URL", i + 1));
        };
        out.extend(list.into_iter().map(|(host, port)| BackendConfig { host, port }));
    }
    if out.is_empty() {
        return Err("hosts is empty".into());
    }
    Ok(out)
}

impl Config {
    /// The hosts of a cluster, primary as declared first; `None` for an unknown cluster.
    pub fn cluster_hosts(&self, name: &str) -> Option<Vec<BackendConfig>> {
        if name == DEFAULT_CLUSTER {
            return Some(std::iter::once(self.primary.clone()).chain(self.replicas.iter().cloned()).collect());
        }
        parse_hosts(&self.clusters.get(name)?.hosts).ok()
    }

    /// Checks `[clusters]`, `[databases]` and `[users]`.
    pub(super) fn validate_topology(&self, problems: &mut Vec<String>) {
        for (name, c) in &self.clusters {
            if name == DEFAULT_CLUSTER {
                problems.push(format!(
                    "[clusters.{DEFAULT_CLUSTER}] is reserved: it is [primary] and [[replicas]]; give the cluster another name"
                ));
            }
            if let Err(e) = parse_hosts(&c.hosts) {
                problems.push(format!("[clusters.{name}] {e}"));
            }
        }
        for (name, d) in &self.databases {
            let here = format!("[databases.{}]", quote_key(name));
            if name.is_empty() {
                problems.push("[databases] a database name is empty".into());
            }
            if name == "pgbouncer" || name == "pgshift" {
                problems.push(format!("{here}: the name is the admin console's; choose another"));
            }
            let cluster = d.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER);
            if cluster != DEFAULT_CLUSTER && !self.clusters.contains_key(cluster) {
                problems.push(format!("{here} cluster = {cluster:?}: no [clusters.{cluster}]"));
            }
            if name == ANY_DATABASE && d.dbname.is_some() {
                problems.push(format!("{here}: dbname cannot be set on \"*\" (it serves each name as itself)"));
            }
            if d.dbname.as_deref() == Some("") {
                problems.push(format!("{here}: dbname is empty"));
            }
            if d.password.is_some() && d.user.is_none() {
                problems.push(format!("{here}: password is given without user"));
            }
            if d.pool_size == Some(0) {
                problems.push(format!("{here}: pool_size must be at least 1"));
            }
            let size = d.pool_size.unwrap_or(self.proxy.default_pool_size);
            if d.min_pool_size.unwrap_or(0) > size {
                problems.push(format!("{here}: min_pool_size must not exceed the pool size ({size})"));
            }
        }
        for (name, u) in &self.users {
            if u.pool_size == Some(0) {
                problems.push(format!("[users.{}]: pool_size must be at least 1", quote_key(name)));
            }
        }
    }
}

/// A TOML key as written in a section header (quoted unless bare).
fn quote_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_entries_and_multi_host_urls() {
        let h = parse_hosts(&["db1:5433".into(), "postgres://u:secret@db2:5432,db3/app".into()]).unwrap();
        let got: Vec<String> = h.iter().map(BackendConfig::address).collect();
        assert_eq!(got, ["db1:5433", "db2:5432", "db3:5432"]);
        let e = parse_hosts(&["postgres://u:secret@".into()]).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(parse_hosts(&[]).is_err());
    }

    #[test]
    fn databases_and_clusters_validate_with_every_problem() {
        let text = r#"
            [[auth.users]]
            name = "app"
            password = "x"
            [clusters.default]
            hosts = ["a:1"]
            [clusters.orders]
            hosts = []
            [databases.app]
            cluster = "nowhere"
            pool_size = 0
            [databases."*"]
            dbname = "x"
            [users.app]
            pool_size = 0
        "#;
        let e = Config::from_toml(text).unwrap_err().0.join("\n");
        for want in [
            "reserved",
            "[clusters.orders] hosts is empty",
            "no [clusters.nowhere]",
            "pool_size must be at least 1",
            "dbname cannot be set",
            "[users.app]",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn a_full_topology_parses() {
        let text = r#"
            [[auth.users]]
            name = "app"
            password = "x"
            [clusters.orders]
            hosts = ["postgres://db1:5432,db2:5433/orders"]
            [databases.shop]
            cluster = "orders"
            dbname = "orders_prod"
            pool_size = 3
            pool_mode = "session"
            query_timeout = "5s"
            max_db_connections = 4
            [databases."*"]
            [users.app]
            max_user_client_connections = 10
        "#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.cluster_hosts("orders").unwrap().len(), 2);
        let shop = &c.databases["shop"];
        assert_eq!(shop.pool_mode, Some(PoolMode::Session));
        assert_eq!(shop.max_db_connections, Some(4));
        assert!(c.databases.contains_key("*"));
        assert_eq!(c.users["app"].max_user_client_connections, Some(10));
    }
}
