//! PgBouncer's `auth_file` format (userlist.txt): one `"name" "secret"` per line.

/// Parses userlist.txt text into (name, secret) pairs. Inside quotes, `""` is a literal quote;
/// lines starting with `;` or `#` and blank lines are skipped. Bad lines are reported by number.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut fields = Vec::new();
        while fields.len() < 2 {
            let (f, after) = quoted(rest.trim_start())
                .ok_or_else(|| format!("auth_file line {}: expected \"name\" \"secret\"", n + 1))?;
            fields.push(f);
            rest = after;
        }
        let secret = fields.pop().unwrap_or_default();
        let name = fields.pop().unwrap_or_default();
        out.push((name, secret));
    }
    Ok(out)
}

/// One `"..."` field at the start of `s`: its unescaped text and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            value.push(c);
            continue;
        }
        match chars.clone().next() {
            Some((_, '"')) => {
                value.push('"');
                chars.next();
            }
            _ => return Some((value, &s[i + 2..])),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbouncer_userlist() {
        let text = "; comment\n\"app\" \"SCRAM-SHA-256$4096:abc$def:ghi\"\n\"we\"\"ird\" \"md5abc\"\n\n\"plain\" \"pw with \"\"quote\"\"\"\n";
        let users = parse(text).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users[0].0, "app");
        assert_eq!(users[1].0, "we\"ird");
        assert_eq!(users[2].1, "pw with \"quote\"");
        assert!(parse("app pw\n").is_err());
        assert!(parse("\"app\" \"unterminated\n").is_err());
    }
}
