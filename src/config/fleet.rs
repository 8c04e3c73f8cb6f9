//! `[fleet]`: several pgshift instances behind one TCP load balancer: a CancelRequest that lands
//! on the wrong instance is passed to the one holding the client, and the instances share the
//! migration phase and a list of who is alive through a control table in PostgreSQL (the store).

use serde::{Deserialize, Serialize};

use super::Dur;

/// Largest fleet id: the id takes the low 14 bits of a client's BackendKeyData pid (PgBouncer's
/// `peer_id` has the same range).
pub const MAX_FLEET_ID: u16 = (1 << 14) - 1;

/// Most clients one fleet instance may have: a fleet pid leaves 17 bits (131,072 values, 130,816
/// of them above the client pid floor) to tell its clients apart, and the registry must always
/// find a free one quickly.
pub const MAX_FLEET_CLIENTS: usize = 100_000;

/// `[fleet]`. Absent (or `id = 0`): this instance is alone, and cancel keys are what they always were.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FleetConfig {
    /// This instance's id, 1..=16383, unique in the fleet; 0 turns the fleet off.
    pub id: u16,
    /// The other instances: where a cancel for a client of theirs is forwarded.
    pub peers: Vec<FleetPeer>,
    /// Which fleet: instances with the same name share a phase and a member list; two fleets may
    /// share one store.
    pub name: String,
    /// `postgres://user:password@host:port/dbname` of the control table's server. The user is
    /// required with a fleet and must be a role of the store's own, one clients never log in as
    /// (the control table belongs to it). The host may be left out (the default cluster's
    /// primary, following failover), and so may the database (the user's name).
    pub store: String,
    /// How often this instance writes its heartbeat and reads the shared phase.
    pub heartbeat_interval: Dur,
    /// A member not heard from for this long is gone: it no longer counts for fenced changes.
    pub heartbeat_timeout: Dur,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            id: 0,
            peers: Vec::new(),
            name: "pgshift".into(),
            store: String::new(),
            heartbeat_interval: Dur(std::time::Duration::from_secs(1)),
            heartbeat_timeout: Dur(std::time::Duration::from_secs(5)),
        }
    }
}

/// The parts of a `[fleet] store` URL; `None` where it leaves one out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreUrl {
    /// Role to log in as.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// `host:port` of the server.
    pub address: Option<String>,
    /// Database holding the control table.
    pub dbname: Option<String>,
}

impl StoreUrl {
    /// Parses `postgres://[user[:password]@][host[:port]][/dbname]` (percent-encoding allowed in
    /// user, password and dbname; port 5432 when left out).
    pub fn parse(s: &str) -> Result<StoreUrl, String> {
        if s.trim().is_empty() {
            return Ok(StoreUrl::default());
        }
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or("must start with postgres://")?;
        let rest = rest.split('?').next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((u, p)) => (non_empty(decode(u)?), non_empty(decode(p)?)),
            None => (None, None),
        };
        let address = match host {
            "" => None,
            h if h.contains(',') => return Err("names one host only".into()),
            h if is_host_port(h) => Some(h.to_string()),
            h if is_host_port(&format!("{h}:5432")) => Some(format!("{h}:5432")),
            h => return Err(format!("host {h:?} is not host[:port]")),
        };
        Ok(StoreUrl { user, password, address, dbname: non_empty(decode(path)?) })
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Percent-decoding of one URL part.
fn decode(s: &str) -> Result<String, String> {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("has a bad %-escape")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once decoded".to_string())
}

/// `[[fleet.peers]]`: another instance of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct FleetPeer {
    /// Its `[fleet] id`.
    pub id: u16,
    /// `host:port` of its client listener (its own address, not the load balancer's).
    pub address: String,
}

impl FleetConfig {
    /// True when this instance is part of a fleet.
    pub fn enabled(&self) -> bool {
        self.id != 0
    }

    /// The address of peer `id`, if it is configured.
    pub fn peer(&self, id: u16) -> Option<&str> {
        self.peers.iter().find(|p| p.id == id).map(|p| p.address.as_str())
    }

    /// Notes every problem: ids out of range or repeated, this instance among its peers, peers
    /// without a fleet id, addresses that are not `host:port`, too many clients for fleet keys,
    /// a store without a role of its own (`client_roles`: the roles clients log in or run as).
    pub fn validate(&self, max_client_conn: usize, client_roles: &[&str], problems: &mut Vec<String>) {
        if self.id > MAX_FLEET_ID {
            problems.push(format!("[fleet] id = {} must be between 1 and {MAX_FLEET_ID} (0 = no fleet)", self.id));
        }
        if let Err(e) = StoreUrl::parse(&self.store) {
            problems.push(format!("[fleet] store {e}"));
        }
        if self.name.is_empty() || self.name.len() > 63 {
            problems.push("[fleet] name must be 1 to 63 characters".into());
        }
        let (every, gone) = (self.heartbeat_interval.0, self.heartbeat_timeout.0);
        if every.is_zero() || gone < every * 2 {
            problems.push(format!(
                "[fleet] heartbeat_timeout ({gone:?}) must be at least twice heartbeat_interval ({every:?}), which is above 0"
            ));
        }
        if !self.enabled() {
            if !self.peers.is_empty() {
                problems.push("[fleet] peers are listed but id is not set: give this instance an id".into());
            }
            return;
        }
        problems.extend(self.store_role_problem(|r| client_roles.contains(&r)));
        if max_client_conn > MAX_FLEET_CLIENTS {
            problems.push(format!(
                "[fleet] a fleet instance takes at most {MAX_FLEET_CLIENTS} clients; lower [proxy] max_client_conn"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let at = format!("[[fleet.peers]] #{}", i + 1);
            if p.id == 0 || p.id > MAX_FLEET_ID {
                problems.push(format!("{at}: id = {} must be between 1 and {MAX_FLEET_ID}", p.id));
            } else if p.id == self.id {
                problems.push(format!("{at}: id = {} is this instance's own [fleet] id", p.id));
            } else if !seen.insert(p.id) {
                problems.push(format!("{at}: id = {} is listed twice", p.id));
            }
            if !is_host_port(&p.address) {
                problems.push(format!("{at}: address = {:?} is not host:port", p.address));
            }
        }
    }
}

/// `host:port` with a non-empty host (a name or an IP address, IPv6 in brackets) and a port above 0.
fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else { return false };
    let name_ok =
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    name_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

impl FleetConfig {
    /// The role the store logs in as, when the URL names one.
    pub fn store_role(&self) -> Option<String> {
        StoreUrl::parse(&self.store).ok().and_then(|u| u.user)
    }

    /// The control table belongs to the store's role, so anyone logged in as it could rewrite the
    /// fleet's migration phase or raise a fence that holds every instance: with a fleet, the store
    /// must name a role of its own, one for which `is_client_role` is false.
    pub fn store_role_problem(&self, is_client_role: impl Fn(&str) -> bool) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        match StoreUrl::parse(&self.store).ok()?.user {
            None => Some(
                "[fleet] store must name a role of its own, one clients do not log in as \
                 (store = \"postgres://pgshift_fleet:password@/dbname\"): the control table belongs to it"
                    .into(),
            ),
            Some(u) if is_client_role(&u) => Some(format!(
                "[fleet] store logs in as {u:?}, a role clients log in or run as: any of them could change the \
                 fleet's migration phase; give the store a role of its own"
            )),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u16, address: &str) -> FleetPeer {
        FleetPeer { id, address: address.into() }
    }

    /// A store URL with a role of its own.
    const STORE: &str = "postgres://pgshift_fleet:pw@/app";

    fn problems(f: &FleetConfig) -> Vec<String> {
        let mut p = Vec::new();
        f.validate(10_000, &["app"], &mut p);
        p
    }

    #[test]
    fn absent_fleet_is_valid_and_off() {
        let f = FleetConfig::default();
        assert!(!f.enabled());
        assert!(problems(&f).is_empty());
    }

    #[test]
    fn every_problem_is_listed() {
        let f = FleetConfig {
            id: 1,
            peers: vec![
                peer(1, "a:1"),
                peer(2, "b:2"),
                peer(2, "c:3"),
                peer(0, "d:4"),
                peer(3, "nope"),
                peer(4, "e:0"),
            ],
            store: STORE.into(),
            ..Default::default()
        };
        let p = problems(&f);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].contains("own"), "{p:?}");
        assert!(p[1].contains("twice"), "{p:?}");
        assert!(p[2].contains("between 1"), "{p:?}");
        assert!(p[3].contains("nope"), "{p:?}");
        assert!(p[4].contains("e:0"), "{p:?}");
    }

    #[test]
    fn ids_and_addresses_in_range_pass() {
        let f = FleetConfig {
            id: MAX_FLEET_ID,
            peers: vec![peer(1, "10.0.0.12:6432"), peer(2, "[::1]:6432"), peer(3, "pgshift-3.pgshift.svc:6432")],
            store: STORE.into(),
            ..Default::default()
        };
        assert!(problems(&f).is_empty(), "{:?}", problems(&f));
        assert_eq!(f.peer(2), Some("[::1]:6432"));
        assert_eq!(f.peer(4), None);
    }

    #[test]
    fn out_of_range_id_peers_without_id_and_too_many_clients() {
        let f = FleetConfig { id: MAX_FLEET_ID + 1, store: STORE.into(), ..Default::default() };
        assert_eq!(problems(&f).len(), 1);
        let f = FleetConfig { id: 0, peers: vec![peer(2, "b:2")], ..Default::default() };
        assert_eq!(problems(&f).len(), 1);
        let mut p = Vec::new();
        FleetConfig { id: 1, store: STORE.into(), ..Default::default() }.validate(MAX_FLEET_CLIENTS + 1, &[], &mut p);
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn store_urls() {
        let u = StoreUrl::parse("postgres://ops:p%40ss@db.internal/control").unwrap();
        assert_eq!(u.user.as_deref(), Some("ops"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.address.as_deref(), Some("db.internal:5432"));
        assert_eq!(u.dbname.as_deref(), Some("control"));
        assert_eq!(StoreUrl::parse("").unwrap(), StoreUrl::default());
        let partial = StoreUrl::parse("postgresql:///control").unwrap();
        assert_eq!((partial.address, partial.dbname.as_deref()), (None, Some("control")));
        assert!(StoreUrl::parse("mysql://x").is_err());
        assert!(StoreUrl::parse("postgres://a,b/x").is_err());
        assert!(StoreUrl::parse("postgres://h/%zz").is_err());
        let mut p = Vec::new();
        let f = FleetConfig {
            store: "http://x".into(),
            heartbeat_timeout: Dur(std::time::Duration::from_secs(1)),
            ..Default::default()
        };
        f.validate(10, &[], &mut p);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn a_fleet_store_names_a_role_clients_do_not_use() {
        let f = |store: &str| FleetConfig { id: 1, store: store.into(), ..Default::default() };
        assert!(problems(&f(""))[0].contains("must name a role of its own"));
        assert!(problems(&f("postgres://db.internal/control"))[0].contains("must name a role of its own"));
        assert!(problems(&f("postgres://app:app@db.internal/control"))[0].contains("logs in as \"app\""));
        assert!(problems(&f(STORE)).is_empty());
        assert!(problems(&FleetConfig { id: 0, ..Default::default() }).is_empty(), "no fleet, no store");
    }
}
