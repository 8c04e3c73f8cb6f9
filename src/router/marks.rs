//! Whole-text checks the token scan cannot make: names that may hide in strings (a DO block's, a
//! PREPARE's) or in Unicode escapes, whose statements pin.

/// The pin reason when the text may create what outlives a session reset (see
/// [`super::LASTING_PINS`]): a Unicode-escaped identifier (`U&"..."`), which may spell any name
/// unseen (a setting such as `role` or `seed` too); and, in `impure` text, the names `setseed`
/// and `dblink_connect` anywhere (any case; in a string they may be a DO block's or a PREPARE's).
pub(super) fn lasting_text(sql: &str, impure: bool) -> Option<&'static str> {
    let b = sql.as_bytes();
    let unicode = memchr::memchr_iter(b'&', b).any(|i| {
        i > 0
            && b[i - 1].eq_ignore_ascii_case(&b'u')
            && b[i + 1..].iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'"')
    });
    if unicode {
        return Some("unicode_identifier");
    }
    let at = |i: usize, word: &[u8]| b.get(i..i + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word));
    if impure && memchr::memchr2_iter(b's', b'S', b).any(|i| at(i, b"setseed")) {
        return Some("setseed");
    }
    if impure && memchr::memchr2_iter(b'd', b'D', b).any(|i| at(i, b"dblink_connect")) {
        return Some("dblink");
    }
    None
}

/// Whether the text names the `pg_settings` view (any case, quoted or not). A Unicode-escaped
/// identifier that could spell it unseen pins the text anyway ([`lasting_text`]).
pub(super) fn names_pg_settings(sql: &str) -> bool {
    let b = sql.as_bytes();
    memchr::memchr2_iter(b'p', b'P', b).any(|i| pg_settings_at(b, i))
}

/// Whether `pg_settings` (any case) starts at byte `i`.
#[inline]
pub(super) fn pg_settings_at(b: &[u8], i: usize) -> bool {
    b.get(i..i + 11).is_some_and(|w| w.eq_ignore_ascii_case(b"pg_settings"))
}

/// Whether a `search_path` value (SQL text, or a startup parameter's literal) may put a schema
/// ahead of `pg_catalog`. Named after another entry, `pg_catalog` is searched there, not first,
/// so a user's function can take a built-in's name (`lower(text)`) and run where pgshift reads a
/// built-in. Any escape or Unicode spelling counts as yes. Allocates nothing: it runs as a
/// client's transaction is routed.
pub fn search_path_shadows(value: &str) -> bool {
    let b = value.as_bytes();
    if b.contains(&b'\\') || b.windows(2).any(|w| w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&') {
        return true;
    }
    let Some(comma) = memchr::memchr(b',', b) else {
        return false;
    };
    // `p` occurs once in the name, so a mismatch restarts the match at the current byte.
    const NAME: &[u8] = b"pg_catalog";
    let mut matched = 0;
    for c in b[comma..].iter().filter(|c| !matches!(c, b'\'' | b'"')).map(u8::to_ascii_lowercase) {
        matched = if c == NAME[matched] { matched + 1 } else { usize::from(c == NAME[0]) };
        if matched == NAME.len() {
            return true;
        }
    }
    false
}
