//! Client-facing database names resolved to a cluster, a server-side name and pool settings.
//!
//! Built from `[databases]` with each runtime. A name listed there is served as configured; any
//! other name goes to the `*` entry under its own name, or is unknown (3D000). Without a
//! `[databases]` section every name goes to the `default` cluster unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use super::cluster::Cluster;
use crate::auth::{UserEntry, Users};
use crate::config::{DatabaseConfig, ANY_DATABASE, DEFAULT_CLUSTER};

/// Where one client-facing database name is served.
#[derive(Debug)]
pub struct DbRoute {
    /// The client-facing name.
    pub name: String,
    /// The database name on the server.
    pub server_db: String,
    /// The cluster serving it.
    pub cluster: Arc<Cluster>,
    /// Per-database settings (absent ones fall back to `[proxy]`); shared by every name the `*`
    /// entry serves, so a client of such a name holds no copy of its own.
    pub settings: Arc<DatabaseConfig>,
    /// The role server connections log in as, when the entry forces one.
    pub forced_user: Option<Arc<UserEntry>>,
}

/// Every client-facing database name of a runtime.
#[derive(Debug, Default)]
pub struct Databases {
    listed: HashMap<String, Arc<DbRoute>>,
    /// The `*` entry (or the implicit one without `[databases]`).
    any: Option<AnyEntry>,
}

/// The `*` entry: its settings, cluster and forced user, shared by every name it serves.
type AnyEntry = (Arc<DatabaseConfig>, Arc<Cluster>, Option<Arc<UserEntry>>);

impl Databases {
    /// Builds the table; a problem per entry that names an unknown cluster or forced user.
    pub fn build(
        config: &std::collections::BTreeMap<String, DatabaseConfig>,
        clusters: &[Arc<Cluster>],
        users: &Users,
    ) -> Result<Databases, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = Databases::default();
        let cluster_of = |d: &DatabaseConfig| {
            let name = d.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER);
            clusters.iter().find(|c| c.name == name).cloned()
        };
        if config.is_empty() {
            out.any = clusters.first().map(|c| (Arc::new(DatabaseConfig::default()), c.clone(), None));
            return Ok(out);
        }
        for (name, d) in config {
            let Some(cluster) = cluster_of(d) else {
                problems.push(format!("[databases.{name}]: unknown cluster"));
                continue;
            };
            let forced_user = match forced_user(d, users) {
                Ok(u) => u,
                Err(e) => {
                    problems.push(format!("[databases.{name}]: {e}"));
                    continue;
                }
            };
            if name == ANY_DATABASE {
                out.any = Some((Arc::new(d.clone()), cluster, forced_user));
                continue;
            }
            let route = DbRoute {
                name: name.clone(),
                server_db: d.dbname.clone().unwrap_or_else(|| name.clone()),
                cluster,
                settings: Arc::new(d.clone()),
                forced_user,
            };
            out.listed.insert(name.clone(), Arc::new(route));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Where `name` is served; `None`: pgshift serves no such database.
    pub fn resolve(&self, name: &str) -> Option<Arc<DbRoute>> {
        if let Some(r) = self.listed.get(name) {
            return Some(r.clone());
        }
        let (settings, cluster, forced_user) = self.any.as_ref()?;
        Some(Arc::new(DbRoute {
            name: name.into(),
            server_db: name.into(),
            cluster: cluster.clone(),
            settings: settings.clone(),
            forced_user: forced_user.clone(),
        }))
    }

    /// The listed entries, by name (the `*` entry is not among them).
    pub fn listed(&self) -> impl Iterator<Item = &Arc<DbRoute>> {
        self.listed.values()
    }

    /// The `*` entry's cluster and settings, if there is one.
    pub fn any(&self) -> Option<(&DatabaseConfig, &Arc<Cluster>)> {
        self.any.as_ref().map(|(d, c, _)| (&**d, c))
    }
}

/// The forced server user of an entry: its own password, or a configured user's.
fn forced_user(d: &DatabaseConfig, users: &Users) -> Result<Option<Arc<UserEntry>>, String> {
    let Some(name) = &d.user else { return Ok(None) };
    if let Some(pw) = &d.password {
        return Ok(Some(Arc::new(UserEntry::new(name, Some(pw), None))));
    }
    match users.get(name) {
        Some(u) => Ok(Some(u)),
        None => Err(format!("user = {name:?} has no password here and is not a configured user")),
    }
}
