//! `PGSHIFT_<SECTION>_<KEY>` environment overrides, applied to the TOML tree before typing.
//!
//! Values are coerced to the type the key has in the defaults (integer, boolean, list, string), so
//! `PGSHIFT_PROXY_DEFAULT_POOL_SIZE=40` works and `PGSHIFT_ADMIN_TOKEN=1234` stays a string.
//! Variables whose section is not a config section (`PGSHIFT_LOG` itself, the log filter, and
//! `PGSHIFT_TEST_*`) are not ours; `PGSHIFT_LOG_FORMAT` is `[log] format`.
//! Besides: `PGSHIFT_PRIMARY_URL` / `PGSHIFT_MIGRATION_TARGET_URL` (a backend from a URL),
//! `PGSHIFT_REPLICAS=host:port,...` (the whole `[[replicas]]` array), and
//! `PGSHIFT_<SECTION>_<KEY>_FILE` (the key's value from the first line of a file, for secrets).

use super::Config;
use toml::{Table, Value};

/// Sections a `PGSHIFT_<SECTION>_<KEY>` variable may name (named sections such as `[databases]`
/// have no variables: a name cannot be spelled in one).
const SECTIONS: &[&str] =
    &["proxy", "auth", "tls", "primary", "routing", "admin", "migration", "backup", "log", "fleet"];

/// Applies every recognised variable of `vars` to `tree`, noting problems.
pub fn apply_overrides(tree: &mut Table, vars: impl IntoIterator<Item = (String, String)>, problems: &mut Vec<String>) {
    let defaults = defaults_tree();
    let mut vars: Vec<_> = vars.into_iter().filter(|(k, _)| k.starts_with("PGSHIFT_")).collect();
    vars.sort(); // deterministic order: PRIMARY_URL before PRIMARY_PORT etc. does not matter, but errors read better
    for (name, value) in vars {
        let rest = name["PGSHIFT_".len()..].to_ascii_lowercase();
        if rest == "primary_url" {
            set_url(tree, &["primary"], &name, &value, problems);
            continue;
        }
        if rest == "migration_target_url" {
            set_url(tree, &["migration", "target"], &name, &value, problems);
            continue;
        }
        if rest == "replicas" {
            set_replicas(tree, &name, &value, problems);
            continue;
        }
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) {
            continue;
        }
        let mut key = if section == "auth" && key == "type" { "type" } else { key };
        let mut template = defaults.get(section).and_then(|s| s.get(key));
        let mut value = value;
        // PGSHIFT_<SECTION>_<KEY>_FILE: the value of KEY is the first line of that file, so a
        // secret (the admin token) can come from a mounted secret instead of the environment.
        if let (None, Some(stem)) = (template, key.strip_suffix("_file")) {
            if let Some(t) = defaults.get(section).and_then(|s| s.get(stem)) {
                match read_first_line(&value) {
                    Ok(v) => (template, key, value) = (Some(t), stem, v),
                    Err(e) => {
                        problems.push(format!("{name}: {e}"));
                        continue;
                    }
                }
            }
        }
        let Some(template) = template else {
            problems.push(format!("{name}: [{section}] has no key {key:?}"));
            continue;
        };
        match coerce(template, &value) {
            Ok(v) => {
                table_at(tree, &[section]).insert(key.to_string(), v);
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
}

/// The defaults as a tree, with sample migration and backup sections so their keys are known too.
fn defaults_tree() -> Table {
    let c = Config { migration: Some(Default::default()), backup: Some(Default::default()), ..Config::default() };
    Table::try_from(&c).unwrap_or_default()
}

fn coerce(template: &Value, raw: &str) -> Result<Value, String> {
    Ok(match template {
        Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| format!("{raw:?} is not an integer"))?),
        Value::Boolean(_) => Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(format!("{raw:?} is not a boolean")),
        }),
        Value::Array(_) => Value::Array(
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect(),
        ),
        _ => Value::String(raw.to_string()),
    })
}

/// `postgres://[user[:password]@]host[:port][,host[:port]...][/db]` -> the backend at `path`.
/// For `[primary]`, a multi-host URL (libpq's way to name an HA cluster) also sets
/// `[[replicas]]` to the other hosts: role discovery then finds which one is the primary.
fn set_url(tree: &mut Table, path: &[&str], name: &str, url: &str, problems: &mut Vec<String>) {
    let Some(hosts) = parse_hosts_url(url) else {
        // The URL may hold a password: never echo it.
        problems.push(format!("{name}: not a postgres://host[:port][,host[:port]...] URL"));
        return;
    };
    let backend = |(host, port): (String, u16)| {
        let mut t = Table::new();
        t.insert("host".into(), Value::String(host));
        t.insert("port".into(), Value::Integer(i64::from(port)));
        t
    };
    let mut hosts = hosts.into_iter();
    if let Some(first) = hosts.next() {
        let t = table_at(tree, path);
        t.extend(backend(first));
    }
    let rest: Vec<Value> = hosts.map(|h| Value::Table(backend(h))).collect();
    match (path, rest.is_empty()) {
        (_, true) => {}
        (["primary"], false) => {
            tree.insert("replicas".into(), Value::Array(rest));
        }
        _ => problems.push(format!("{name}: names several hosts; only PGSHIFT_PRIMARY_URL takes a multi-host URL")),
    }
}

/// Every host of a postgres:// URL, libpq multi-host form included (`h1:5432,h2,h3:5433`);
/// a host without a port gets 5432.
pub fn parse_hosts_url(url: &str) -> Option<Vec<(String, u16)>> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostports = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hostports.split(',').map(|hp| parse_host_port(&format!("postgres://{hp}"))).collect()
}

/// A postgres:// URL with its password replaced, for showing a configuration.
pub fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else { return s.to_string() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{hosts}{tail}")
        }
        _ => s.to_string(),
    }
}

/// `host[:port],...` (or postgres:// URLs) -> the whole `[[replicas]]` array; empty: none.
fn set_replicas(tree: &mut Table, name: &str, list: &str, problems: &mut Vec<String>) {
    let mut replicas = Vec::new();
    for (i, item) in list.split(',').map(str::trim).enumerate().filter(|(_, s)| !s.is_empty()) {
        let url = if item.contains("://") { item.to_string() } else { format!("postgres://{item}") };
        match parse_host_port(&url) {
            Some((host, port)) if !host.contains(':') || item.contains('[') => {
                let mut t = Table::new();
                t.insert("host".into(), Value::String(host));
                t.insert("port".into(), Value::Integer(i64::from(port)));
                replicas.push(Value::Table(t));
            }
            // A URL may hold a password: name the position, not the text.
            _ => problems.push(format!(
                "{name}: entry {} is not host[:port] ([v6addr]:port for IPv6) or a postgres:// URL",
                i + 1
            )),
        }
    }
    tree.insert("replicas".into(), Value::Array(replicas));
}

/// The first line of a file named by a `*_FILE` variable (trailing whitespace dropped).
fn read_first_line(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(text.lines().next().unwrap_or_default().trim_end().to_string())
}

/// Host and port of a postgres:// URL (default port 5432).
pub fn parse_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.is_empty() {
        return None;
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, p.parse().ok()?),
        _ => (hostport, 5432),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

fn table_at<'a>(tree: &'a mut Table, path: &[&str]) -> &'a mut Table {
    let mut t = tree;
    for p in path {
        let entry = t.entry(p.to_string()).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else { unreachable!("made a table just above") };
        t = next;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_host_port("postgres://db:5433"), Some(("db".into(), 5433)));
        assert_eq!(parse_host_port("postgres://u:p@db/app"), Some(("db".into(), 5432)));
        assert_eq!(parse_host_port("postgresql://[::1]:6000/x"), Some(("::1".into(), 6000)));
        assert_eq!(parse_host_port("mysql://x"), None);
        let multi = parse_hosts_url("postgres://u:p@h1:5433,h2,[::1]:7/app?target_session_attrs=any").unwrap();
        assert_eq!(multi, [("h1".into(), 5433), ("h2".into(), 5432), ("::1".into(), 7)]);
        assert_eq!(parse_hosts_url("postgres://h1,/x"), None);
        assert_eq!(redact_url("postgres://u:pw@h1,h2/db"), "postgres://u:<redacted>@h1,h2/db");
    }

    #[test]
    fn a_multi_host_primary_url_makes_the_others_replicas() {
        let mut tree = Table::new();
        let mut problems = Vec::new();
        let vars = [("PGSHIFT_PRIMARY_URL".to_string(), "postgres://a:1,b:2,c:3/app".to_string())];
        apply_overrides(&mut tree, vars, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(tree["primary"]["host"].as_str(), Some("a"));
        let replicas = tree["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 2);
        assert_eq!(replicas[1]["port"].as_integer(), Some(3));
    }
}
