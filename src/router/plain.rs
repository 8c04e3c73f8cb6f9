//! The quick look: proves, without the lexer, that a simple query changes no session state.
//!
//! Only a few shapes pass: one plain SELECT (not SELECT INTO), UPDATE or DELETE with no
//! parenthesis at all; one INSERT whose rows are literal values; a bare BEGIN, COMMIT or ROLLBACK. Anything else, however
//! harmless, goes to the full classifier, which is right for every input; this look only has to
//! be right for what it accepts.

use super::StatementKind;

/// A quick look that proves a simple query is one of the plain shapes above, changing no session
/// state (no function call, advisory lock, set_config, pg_settings, or table it creates): its
/// kind, or `None` when only a full classification can tell. Conservative by construction:
/// comments, several statements, or any suspicious word send it to the classifier. Works on the
/// raw bytes (it only looks at ASCII), so it needs no UTF-8 check either.
pub fn plain_statement(sql: &[u8]) -> Option<StatementKind> {
    let body = body_of(sql)?;
    let word_end = body.iter().position(|b| !b.is_ascii_alphabetic()).unwrap_or(body.len());
    let Some(kind) = [
        (&b"select"[..], StatementKind::Select),
        (b"insert", StatementKind::Insert),
        (b"update", StatementKind::Update),
        (b"delete", StatementKind::Delete),
    ]
    .into_iter()
    .find(|(w, _)| body[..word_end].eq_ignore_ascii_case(w))
    .map(|(_, k)| k) else {
        return transaction_control(body).then_some(StatementKind::Other);
    };
    // memchr scans a word at a time; only its few hits get a closer look.
    let mut paren = false;
    for i in memchr::memchr3_iter(b';', b'(', b'&', body) {
        match body[i] {
            // `(` may be any function call (set_config, pg_advisory_lock, a user function: none
            // can be called without one).
            b'(' => paren = true,
            // `;` separates statements (or hides in a string: the classifier can tell); `&`
            // may be `U&"..."`, an identifier spelled in escapes this look cannot read.
            _ => return None,
        }
    }
    let comment = memchr::memchr2_iter(b'-', b'/', body)
        .any(|i| matches!((body[i], body.get(i + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*'))));
    // Found by their `p`, rarer in SQL than other letters: `temp` (SELECT INTO TEMP, or a table
    // in pg_temp, is a session's own state) and `pg_settings` (an UPDATE of it is a SET).
    let temp_or_settings = memchr::memchr2_iter(b'p', b'P', body)
        .any(|i| (i >= 3 && body[i - 3..i].eq_ignore_ascii_case(b"tem")) || super::marks::pg_settings_at(body, i));
    // SELECT ... INTO creates a table: a temporary one when the search path starts at pg_temp.
    let into = kind == StatementKind::Select
        && memchr::memchr2_iter(b'n', b'N', body).any(|i| {
            i >= 1
                && body[i - 1].eq_ignore_ascii_case(&b'i')
                && body.get(i + 1..i + 3).is_some_and(|w| w.eq_ignore_ascii_case(b"to"))
        });
    if comment || temp_or_settings || into {
        return None;
    }
    // The one shape allowed to hold parentheses is INSERT's literal rows.
    if paren && !(kind == StatementKind::Insert && literal_insert(body)) {
        return None;
    }
    Some(kind)
}

/// The statement without the whitespace around it and one final `;`; `None` when blank.
fn body_of(sql: &[u8]) -> Option<&[u8]> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let s = &sql[start..];
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |e| e + 1);
    let body = &s[..end];
    Some(body.strip_suffix(b";").unwrap_or(body))
}

/// A plain statement for routing: a SELECT, UPDATE or DELETE the quick look accepts, or an
/// INSERT of literal rows, whose text the classifier can only read as every such statement of its
/// kind reads ([`plain_sample`]: one pure read for a replica, or one pure write), whatever its
/// settings, so routing needs no full parse. Its kind, or `None` when only a full classification
/// can tell. On top of the quick look's refusals it refuses, after the first word, quoted or not:
/// - the words `insert`, `update`, `delete`, `merge` (a write, or a column named like one, which
///   the classifier cannot tell apart), `for` and `key` (FOR UPDATE/SHARE locks rows, and the
///   classifier reads `KEY SHARE` as a locking clause too), as parts of longer words too;
/// - a backslash or a dollar sign (text lexed differently by settings, or dollar-quoted), a
///   bracket, a parenthesis outside an INSERT (a closing one alone is not valid SQL), bytes
///   outside printable ASCII and whitespace, and the few ASCII bytes the lexer rejects;
/// - an unterminated quote or quoted name.
pub fn plain_class(sql: &[u8]) -> Option<StatementKind> {
    plain_class_of(sql, plain_statement(sql)?)
}

/// [`plain_class`] for a text the quick look already read as `kind`.
pub fn plain_class_of(sql: &[u8], kind: StatementKind) -> Option<StatementKind> {
    let body = body_of(sql)?;
    let parens = match kind {
        StatementKind::Select | StatementKind::Update | StatementKind::Delete => false,
        // Without a parenthesis the quick look reads no further than the first word: an INSERT
        // must be one it read whole.
        StatementKind::Insert if literal_insert(body) => true,
        StatementKind::Insert | StatementKind::Other => return None,
    };
    let first = body.iter().position(|b| !b.is_ascii_alphabetic()).unwrap_or(body.len());
    // The quick look reads the first word up to a non-letter; the lexer reads `select2` as a name.
    if body.get(first).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return None;
    }
    plain_text(&body[first..], parens).then_some(kind)
}

/// A text every [`plain_class`] text of `kind` classifies as (the classifier's verdict on it is
/// what routing uses for them).
pub fn plain_sample(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Select => "SELECT 1",
        StatementKind::Insert => "INSERT INTO t VALUES (1)",
        StatementKind::Update => "UPDATE t SET a = 1",
        StatementKind::Delete => "DELETE FROM t",
        StatementKind::Other => "",
    }
}

/// What a byte means to [`plain_text`].
const PLAIN: u8 = 0;
const NEVER: u8 = 1;
const QUOTE: u8 = 2;
const WORD: u8 = 3;
const PAREN: u8 = 4;
const READ_BYTES: [u8; 256] = {
    let mut t = [NEVER; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = PLAIN;
        b += 1;
    }
    let mut i = 0;
    let never = b"\\$`{}[]";
    while i < never.len() {
        t[never[i] as usize] = NEVER;
        i += 1;
    }
    t[b'\t' as usize] = PLAIN;
    t[b'\n' as usize] = PLAIN;
    t[b'\r' as usize] = PLAIN;
    t[b'\'' as usize] = QUOTE;
    t[b'(' as usize] = PAREN;
    t[b')' as usize] = PAREN;
    t[b'"' as usize] = QUOTE;
    let starts = b"iudmfkIUDMFK";
    let mut j = 0;
    while j < starts.len() {
        t[starts[j] as usize] = WORD;
        j += 1;
    }
    t
};

/// The text part of [`plain_class`] after the first word: no write or locking word, no byte
/// lexed unlike its look, parentheses only where `parens` allows them, every quote closed.
fn plain_text(sql: &[u8], parens: bool) -> bool {
    let mut quote = None;
    for (i, &b) in sql.iter().enumerate() {
        match READ_BYTES[b as usize] {
            PLAIN => {}
            PAREN if parens => {}
            QUOTE => match quote {
                None => quote = Some(b),
                Some(q) if q == b => quote = None,
                Some(_) => {}
            },
            WORD => {
                let word: &[u8] = match b.to_ascii_lowercase() {
                    b'i' => b"insert",
                    b'u' => b"update",
                    b'd' => b"delete",
                    b'm' => b"merge",
                    b'k' => b"key",
                    _ => b"for",
                };
                if sql.get(i..i + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word)) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    quote.is_none()
}

/// `BEGIN`, `COMMIT`, `END`, `ROLLBACK` or `ABORT`, optionally followed by `WORK` or
/// `TRANSACTION`, and nothing else (no modes, no savepoints, no PREPARED).
fn transaction_control(body: &[u8]) -> bool {
    let mut look = Look { s: body, at: 0 };
    let Some(first) = look.word() else {
        return false;
    };
    if !["begin", "commit", "end", "rollback", "abort"].iter().any(|w| first.eq_ignore_ascii_case(w.as_bytes())) {
        return false;
    }
    let mark = look.at;
    if !look.word().is_some_and(|w| w.eq_ignore_ascii_case(b"work") || w.eq_ignore_ascii_case(b"transaction")) {
        look.at = mark;
    }
    look.end()
}

/// `INSERT INTO name [(column, ...)] VALUES (literal, ...)[, (...)]`, where a literal is a
/// number, a string without backslashes, NULL, TRUE, FALSE, DEFAULT or one of the SQL date and
/// time keywords. No casts, no expressions, no ON CONFLICT, no RETURNING.
fn literal_insert(body: &[u8]) -> bool {
    // A backslash could escape a quote when standard_conforming_strings is off; a double quote or
    // a dollar sign starts text this look does not read.
    if memchr::memchr3(b'\\', b'"', b'$', body).is_some() {
        return false;
    }
    let mut look = Look { s: body, at: 0 };
    let head = look.keyword(b"insert") && look.keyword(b"into") && look.name();
    if !head {
        return false;
    }
    if look.punct(b'(') && !look.list(|l| l.word().is_some()) {
        return false;
    }
    if !look.keyword(b"values") {
        return false;
    }
    loop {
        if !(look.punct(b'(') && look.list(Look::literal)) {
            return false;
        }
        if !look.punct(b',') {
            return look.end();
        }
    }
}

/// Keywords that read as literals in a VALUES row: constants and the SQL date and time value
/// functions, which take no parenthesis (with one, the row is not read here).
const LITERAL_WORDS: [&str; 9] = [
    "null",
    "true",
    "false",
    "default",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
];

/// A cursor over ASCII tokens, for the shapes the quick look accepts.
struct Look<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Look<'a> {
    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    /// An unquoted identifier or keyword.
    fn word(&mut self) -> Option<&'a [u8]> {
        self.skip_space();
        let rest = &self.s[self.at..];
        if !rest.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') {
            return None;
        }
        let len = rest.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(rest.len());
        self.at += len;
        Some(&rest[..len])
    }

    fn keyword(&mut self, kw: &[u8]) -> bool {
        self.word().is_some_and(|w| w.eq_ignore_ascii_case(kw))
    }

    /// `table` or `schema.table`.
    fn name(&mut self) -> bool {
        if self.word().is_none() {
            return false;
        }
        if self.s.get(self.at) == Some(&b'.') {
            self.at += 1;
            return self.s.get(self.at).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') && self.word().is_some();
        }
        true
    }

    fn punct(&mut self, c: u8) -> bool {
        self.skip_space();
        let hit = self.s.get(self.at) == Some(&c);
        self.at += usize::from(hit);
        hit
    }

    /// Items separated by commas up to a closing parenthesis (the opening one already read).
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> bool) -> bool {
        loop {
            if !item(self) {
                return false;
            }
            if self.punct(b')') {
                return true;
            }
            if !self.punct(b',') {
                return false;
            }
        }
    }

    /// A number (optionally signed), a quoted string, or one of [`LITERAL_WORDS`].
    fn literal(&mut self) -> bool {
        self.skip_space();
        match self.s.get(self.at) {
            Some(b'\'') => self.string(),
            Some(b'-' | b'+') => {
                self.at += 1;
                self.number()
            }
            Some(b) if b.is_ascii_digit() => self.number(),
            _ => self.word().is_some_and(|w| LITERAL_WORDS.iter().any(|k| w.eq_ignore_ascii_case(k.as_bytes()))),
        }
    }

    /// Digits, an optional fraction, an optional exponent; no letter straight after.
    fn number(&mut self) -> bool {
        let digits = |l: &mut Self| {
            let from = l.at;
            while l.s.get(l.at).is_some_and(u8::is_ascii_digit) {
                l.at += 1;
            }
            l.at > from
        };
        if !digits(self) {
            return false;
        }
        if self.s.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self);
        }
        if matches!(self.s.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.s.get(self.at), Some(b'-' | b'+')) {
                self.at += 1;
            }
            if !digits(self) {
                return false;
            }
        }
        !self.s.get(self.at).is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
    }

    /// `'...'` with `''` for a quote inside (backslashes were refused before).
    fn string(&mut self) -> bool {
        self.at += 1;
        loop {
            let Some(q) = memchr::memchr(b'\'', &self.s[self.at..]) else {
                return false;
            };
            self.at += q + 1;
            if self.s.get(self.at) != Some(&b'\'') {
                return true;
            }
            self.at += 1;
        }
    }

    fn end(&mut self) -> bool {
        self.skip_space();
        self.at == self.s.len()
    }
}

#[cfg(test)]
#[path = "plain_tests.rs"]
mod tests;
