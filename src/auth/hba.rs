//! Host-based access rules (`[auth] auth_hba_file`): PostgreSQL's pg_hba.conf format, the subset
//! PgBouncer supports. The first line matching a client's connection type, database, user and
//! address decides its authentication method; no matching line means the client is refused.
//!
//! Address matching is done here on `std::net::IpAddr` (a mask over the address's bits) rather
//! than with a network crate: it is the only operation needed.

use std::net::IpAddr;
use std::path::Path;

use crate::config::AuthType;

/// How a matching line lets a client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Refuse the connection.
    Reject,
    /// Authenticate with this method.
    Auth(AuthType),
}

/// The rules of one pg_hba.conf file, in order.
#[derive(Debug, Clone, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    SameUser,
    Replication,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    All,
    Net { addr: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone)]
struct Rule {
    conn: ConnType,
    databases: Vec<Name>,
    users: Vec<Name>,
    address: Address,
    method: Method,
}

/// One token of a field: its text and whether it was quoted (quoted keywords are plain names).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    quoted: bool,
}

impl Token {
    fn is(&self, keyword: &str) -> bool {
        !self.quoted && self.text == keyword
    }
}

/// A whitespace-separated field: one or more comma-separated tokens.
type Field = Vec<Token>;

impl Hba {
    /// Reads and parses `path`; every problem is listed with its line number.
    pub fn load(path: &str) -> Result<Hba, Vec<String>> {
        let text = std::fs::read_to_string(Path::new(path))
            .map_err(|e| vec![format!("[auth] cannot read auth_hba_file {path}: {e}")])?;
        Hba::parse(&text).map_err(|p| p.into_iter().map(|m| format!("auth_hba_file {path}: {m}")).collect())
    }

    /// Parses pg_hba.conf text; every problem is listed with its line number.
    pub fn parse(text: &str) -> Result<Hba, Vec<String>> {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (n, fields) in logical_lines(text) {
            match fields {
                Ok(f) if f.is_empty() => {}
                Ok(f) => match rule(&f) {
                    Ok(r) => rules.push(r),
                    Err(e) => problems.push(format!("line {n}: {e}")),
                },
                Err(e) => problems.push(format!("line {n}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(Hba { rules })
        } else {
            Err(problems)
        }
    }

    /// The method of the first line matching a client, or `None` when no line matches. `peer` is
    /// the TCP client's address, `None` for a Unix-socket client: that one matches `local` lines,
    /// and a TCP client `host`, `hostssl` and `hostnossl` lines, as in PostgreSQL.
    pub fn lookup(&self, peer: Option<IpAddr>, tls: bool, user: &str, database: &str) -> Option<Method> {
        let peer = peer.map(|p| p.to_canonical());
        self.rules.iter().find(|r| r.matches(peer, tls, user, database)).map(|r| r.method)
    }

    /// True if any line authenticates with a client certificate.
    pub fn uses_cert(&self) -> bool {
        self.rules.iter().any(|r| r.method == Method::Auth(AuthType::Cert))
    }
}

impl Rule {
    fn matches(&self, peer: Option<IpAddr>, tls: bool, user: &str, database: &str) -> bool {
        let conn = match self.conn {
            ConnType::Local => peer.is_none(),
            ConnType::Host => peer.is_some(),
            ConnType::HostSsl => peer.is_some() && tls,
            ConnType::HostNoSsl => peer.is_some() && !tls,
        };
        let db = self.databases.iter().any(|d| match d {
            Name::All => true,
            Name::SameUser => database == user,
            Name::Replication => false, // replication connections are refused before this check
            // The console answers to two names: a line for either covers both, so that a
            // rule keeping `pgbouncer` off the network is not walked around as `pgshift`.
            Name::Exact(n) => n == database || (is_console(n) && is_console(database)),
        });
        let usr = self.users.iter().any(|u| match u {
            Name::All => true,
            Name::Exact(n) => n == user,
            Name::SameUser | Name::Replication => false,
        });
        conn && db && usr && address_matches(&self.address, peer)
    }
}

/// True for the admin console's database names (`pgbouncer`, `pgshift`).
fn is_console(database: &str) -> bool {
    crate::client::handshake::CONSOLE_DATABASES.contains(&database)
}

/// A `local` line's address is `All`; a Unix-socket client (`None`) matches only that.
fn address_matches(a: &Address, peer: Option<IpAddr>) -> bool {
    let Some(peer) = peer else { return *a == Address::All };
    match (a, peer) {
        (Address::All, _) => true,
        (Address::Net { addr: IpAddr::V4(net), prefix }, IpAddr::V4(p)) => {
            masked(u32::from(*net).into(), *prefix, 32) == masked(u32::from(p).into(), *prefix, 32)
        }
        (Address::Net { addr: IpAddr::V6(net), prefix }, IpAddr::V6(p)) => {
            masked(u128::from(*net), *prefix, 128) == masked(u128::from(p), *prefix, 128)
        }
        _ => false,
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    bits >> (width - prefix.min(width))
}

/// Splits text into logical lines (a trailing backslash continues a line, as in PostgreSQL 16),
/// each with its first line number and its fields.
fn logical_lines(text: &str) -> Vec<(usize, Result<Vec<Field>, String>)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) if !head.contains('#') => {
                pending.push_str(head);
                pending.push(' ');
            }
            _ => {
                pending.push_str(line);
                out.push((start, fields(&pending)));
                pending.clear();
            }
        }
    }
    if !pending.is_empty() {
        out.push((start, fields(&pending)));
    }
    out
}

/// Tokenizes one line: fields split by whitespace, tokens within a field by commas, `"..."`
/// quoting (with `""` for a quote), `#` starting a comment outside quotes.
fn fields(line: &str) -> Result<Vec<Field>, String> {
    let mut out: Vec<Field> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(out),
            Some(_) => {}
        }
        let mut field = Vec::new();
        loop {
            let mut tok = Token { text: String::new(), quoted: false };
            let mut in_quotes = false;
            while let Some(&c) = chars.peek() {
                if in_quotes {
                    chars.next();
                    if c == '"' {
                        if chars.next_if_eq(&'"').is_some() {
                            tok.text.push('"');
                        } else {
                            in_quotes = false;
                        }
                    } else {
                        tok.text.push(c);
                    }
                } else if c == '"' {
                    chars.next();
                    in_quotes = true;
                    tok.quoted = true;
                } else if c == ',' || c == '#' || c.is_whitespace() {
                    break;
                } else {
                    chars.next();
                    tok.text.push(c);
                }
            }
            if in_quotes {
                return Err("unterminated quoted string".into());
            }
            field.push(tok);
            if chars.next_if_eq(&',').is_none() {
                break;
            }
        }
        out.push(field);
    }
}

fn rule(f: &[Field]) -> Result<Rule, String> {
    let single = |i: usize, what: &str| -> Result<&Token, String> {
        let field = f.get(i).ok_or_else(|| format!("end of line before the {what} field"))?;
        match field.as_slice() {
            [t] => Ok(t),
            _ => Err(format!("the {what} field takes one value, not a list")),
        }
    };
    let conn_tok = single(0, "connection type")?;
    let conn = match conn_tok.text.as_str() {
        _ if conn_tok.quoted => return Err(format!("invalid connection type {:?}", conn_tok.text)),
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "hostgssenc" | "hostnogssenc" => return Err(format!("connection type {} is not supported", conn_tok.text)),
        "include" | "include_if_exists" | "include_dir" => {
            return Err(format!("{} is not supported: put every line in auth_hba_file", conn_tok.text))
        }
        other => return Err(format!("invalid connection type {other:?}")),
    };
    let databases = names(f.get(1).ok_or("end of line before the database field")?, true)?;
    let users = names(f.get(2).ok_or("end of line before the user field")?, false)?;
    let mut next = 3;
    let address = if conn == ConnType::Local {
        Address::All
    } else {
        let (a, used) = address(f, next)?;
        next += used;
        a
    };
    let method_tok = single(next, "method")?;
    let method = method(method_tok)?;
    if let Some(opt) = f.get(next + 1) {
        let text: Vec<&str> = opt.iter().map(|t| t.text.as_str()).collect();
        return Err(format!("authentication options ({}) are not supported", text.join(",")));
    }
    Ok(Rule { conn, databases, users, address, method })
}

fn names(field: &Field, database: bool) -> Result<Vec<Name>, String> {
    let what = if database { "database" } else { "user" };
    field
        .iter()
        .map(|t| match t.text.as_str() {
            _ if t.is("all") => Ok(Name::All),
            _ if database && t.is("sameuser") => Ok(Name::SameUser),
            _ if database && t.is("replication") => Ok(Name::Replication),
            _ if database && (t.is("samerole") || t.is("samegroup")) => {
                Err(format!("{} is not supported (pgshift does not know role membership)", t.text))
            }
            s if !t.quoted && s.starts_with('+') => {
                Err(format!("group names ({s}) are not supported: list the users by name"))
            }
            s if !t.quoted && s.starts_with('@') => {
                Err(format!("file inclusion ({s}) is not supported: list the {what} names in the line"))
            }
            s if !t.quoted && s.starts_with('/') => Err(format!("regular expressions ({s}) are not supported")),
            "" => Err(format!("empty {what} name")),
            s => Ok(Name::Exact(s.to_string())),
        })
        .collect()
}

/// The address at field `i` (and a netmask in the next one); returns it and the fields it used.
fn address(f: &[Field], i: usize) -> Result<(Address, usize), String> {
    let field = f.get(i).ok_or("end of line before the address field")?;
    let [tok] = field.as_slice() else {
        return Err("the address field takes one value, not a list".into());
    };
    let text = tok.text.as_str();
    if tok.is("all") {
        return Ok((Address::All, 1));
    }
    if tok.is("samehost") || tok.is("samenet") {
        return Err(format!("{text} is not supported: write the address as CIDR"));
    }
    if let Some((ip, bits)) = text.split_once('/') {
        let addr: IpAddr = ip.parse().map_err(|_| format!("invalid IP address {ip:?}"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            bits.parse::<u8>().ok().filter(|b| *b <= width).ok_or_else(|| format!("invalid CIDR mask {bits:?}"))?;
        return Ok((Address::Net { addr, prefix }, 1));
    }
    let Ok(addr) = text.parse::<IpAddr>() else {
        return Err(format!("host names ({text:?}) are not supported: write an IP address in CIDR form"));
    };
    let mask_field =
        f.get(i + 1).and_then(|m| m.first()).ok_or("an IP address needs a CIDR mask or a netmask column")?;
    let mask: IpAddr = mask_field.text.parse().map_err(|_| format!("invalid IP mask {:?}", mask_field.text))?;
    let prefix = prefix_of(mask).ok_or_else(|| format!("invalid IP mask {:?}", mask_field.text))?;
    if mask.is_ipv4() != addr.is_ipv4() {
        return Err("IP address and mask do not match in family".into());
    }
    Ok((Address::Net { addr, prefix }, 2))
}

/// The prefix length of a contiguous netmask like 255.255.255.0.
fn prefix_of(mask: IpAddr) -> Option<u8> {
    let (bits, width) = match mask {
        IpAddr::V4(m) => (u128::from(u32::from(m)) << 96, 32u32),
        IpAddr::V6(m) => (u128::from(m), 128),
    };
    let ones = bits.leading_ones();
    (bits.count_ones() == ones && ones <= width).then_some(ones as u8)
}

fn method(t: &Token) -> Result<Method, String> {
    Ok(match t.text.as_str() {
        "trust" => Method::Auth(AuthType::Trust),
        "reject" => Method::Reject,
        "md5" => Method::Auth(AuthType::Md5),
        "scram-sha-256" => Method::Auth(AuthType::ScramSha256),
        "cert" => Method::Auth(AuthType::Cert),
        "password" => {
            return Err("method password is not supported: pgshift never asks for a cleartext password \
                        (use scram-sha-256)"
                .into())
        }
        "peer" | "ident" | "gss" | "sspi" | "ldap" | "radius" | "pam" | "bsd" | "oauth" => {
            return Err(format!("method {} is not supported (trust, reject, md5, scram-sha-256, cert)", t.text))
        }
        other => return Err(format!("invalid authentication method {other:?}")),
    })
}

#[cfg(test)]
mod tests;
