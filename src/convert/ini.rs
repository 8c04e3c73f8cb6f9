//! PgBouncer's configuration syntax: an ini file (`[section]`, `key = value`, `;` and `#`
//! comment lines, `%include`) and the libpq-style connection strings of its `[databases]`.

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key as written (database and user names are case-sensitive); compare settings with
    /// [`Entry::setting`].
    pub key: String,
    /// Everything after the first `=`, trimmed.
    pub value: String,
    /// 1-based line number, for "pgbouncer.ini:12" in comments and reports.
    pub line: usize,
}

impl Entry {
    /// The key lower-cased: PgBouncer setting names are case-insensitive.
    pub fn setting(&self) -> String {
        self.key.to_ascii_lowercase()
    }
}

/// One `[section]` and its entries, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Lower-cased name: pgbouncer, databases, users, peers.
    pub name: String,
    /// Entries in file order (a repeated key appears twice; the later one wins in PgBouncer).
    pub entries: Vec<Entry>,
}

/// A parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    /// Sections in file order; a section written twice appears twice.
    pub sections: Vec<Section>,
    /// `%include path` lines (not followed: reported instead).
    pub includes: Vec<Entry>,
}

impl Ini {
    /// Entries of every section called `name`, in file order.
    pub fn section(&self, name: &str) -> impl Iterator<Item = &Entry> {
        let name = name.to_string();
        self.sections.iter().filter(move |s| s.name == name).flat_map(|s| s.entries.iter())
    }
}

/// Parses ini text. Comment lines start with `;` or `#` (after blanks), as in PgBouncer; a `;` or
/// `#` inside a value is part of the value. Errors name the line.
pub fn parse(text: &str) -> Result<Ini, String> {
    let mut ini = Ini::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let s = raw.trim();
        if s.is_empty() || s.starts_with(';') || s.starts_with('#') {
            continue;
        }
        if let Some(path) = s.strip_prefix("%include") {
            ini.includes.push(Entry { key: "%include".into(), value: path.trim().to_string(), line });
            continue;
        }
        if let Some(name) = s.strip_prefix('[') {
            let name = name.strip_suffix(']').ok_or_else(|| format!("line {line}: section header without ]"))?;
            ini.sections.push(Section { name: name.trim().to_ascii_lowercase(), entries: Vec::new() });
            continue;
        }
        let (key, value) = s.split_once('=').ok_or_else(|| format!("line {line}: expected key = value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("line {line}: empty key"));
        }
        let section = ini.sections.last_mut().ok_or_else(|| format!("line {line}: setting before any [section]"))?;
        section.entries.push(Entry { key: key.to_string(), value: value.trim().to_string(), line });
    }
    Ok(ini)
}

/// Parses a libpq-style `key=value key='quoted value'` string (a `[databases]` entry); keys are
/// lower-cased. Inside quotes `\'` and `\\` are escapes, as in libpq.
pub fn parse_connstr(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected {key}=value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in the value of {key}")),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| format!("dangling \\ in {key}"))?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((key.to_ascii_lowercase(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_entries_comments() {
        let text = "; top comment\n[databases]\nApp = host=db port=5433\n\n[pgbouncer]\n  # indented comment\n\
                    Listen_Port = 6432\nserver_reset_query = DISCARD ALL; -- kept\n%include /etc/pgbouncer/more.ini\n";
        let ini = parse(text).unwrap();
        assert_eq!(ini.sections.len(), 2);
        let db: Vec<_> = ini.section("databases").collect();
        assert_eq!(db[0].key, "App");
        assert_eq!(db[0].value, "host=db port=5433");
        assert_eq!(db[0].line, 3);
        let pb: Vec<_> = ini.section("pgbouncer").collect();
        assert_eq!(pb[0].setting(), "listen_port");
        assert_eq!(pb[1].value, "DISCARD ALL; -- kept");
        assert_eq!(ini.includes[0].value, "/etc/pgbouncer/more.ini");
        assert_eq!(ini.includes[0].line, 9);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(parse("[pgbouncer]\nlisten_port\n").unwrap_err(), "line 2: expected key = value");
        assert_eq!(parse("x = 1\n").unwrap_err(), "line 1: setting before any [section]");
        assert_eq!(parse("[pgbouncer\n").unwrap_err(), "line 1: section header without ]");
    }

    #[test]
    fn connection_strings() {
        let kv = parse_connstr("host=10.0.0.5 port = 5433 dbname=app password='it\\'s \\\\ x' pool_size=5").unwrap();
        assert_eq!(kv[0], ("host".into(), "10.0.0.5".into()));
        assert_eq!(kv[1], ("port".into(), "5433".into()));
        assert_eq!(kv[3].1, "it's \\ x");
        assert_eq!(kv.len(), 5);
        assert!(parse_connstr("host").is_err());
        assert!(parse_connstr("password='open").is_err());
        assert_eq!(parse_connstr("  ").unwrap(), vec![]);
    }
}
