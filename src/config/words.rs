//! Configuration problems in words an operator knows: "must be a whole number, 0 or more"
//! rather than serde's "expected usize", and "did you mean" for a mistyped key or value.

/// How close a typed name must be to a known one to be suggested (edit distance).
fn close(typed: &str, known: &str) -> bool {
    let d = strsim::levenshtein(typed, known);
    d <= 2.max(known.len() / 4) && d < known.len()
}

/// The known name closest to `typed`, when one is close enough to be what was meant.
pub fn did_you_mean<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known.into_iter().filter(|k| close(typed, k)).min_by_key(|k| strsim::levenshtein(typed, k))
}

/// Rewrites a deserializer's message for one value (`invalid type: integer `-5`, expected usize`,
/// then a line `in `key``) as a rule the value breaks.
pub fn plain(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    let Some((_, expected)) = first.rsplit_once("expected ") else {
        return first.to_string();
    };
    if let Some(rest) = first.strip_prefix("unknown variant `") {
        let typed = rest.split('`').next().unwrap_or_default();
        return one_of(typed, expected);
    }
    let rule = match expected {
        "usize" | "u64" | "u32" | "u8" => "must be a whole number, 0 or more",
        "u16" => "must be a whole number from 0 to 65535",
        "i64" | "i32" | "isize" => "must be a whole number",
        "f64" | "f32" => "must be a number",
        "a boolean" => "must be true or false",
        "a string" => "must be a string in quotes",
        "a sequence" => "must be a list: [\"a\", \"b\"]",
        _ => return first.to_string(),
    };
    rule.to_string()
}

/// "must be one of a, b; did you mean b?" from serde's "`a` or `b`" / "one of `a`, `b`, `c`".
fn one_of(typed: &str, expected: &str) -> String {
    let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let mut s = format!("must be one of {}", options.join(", "));
    if let Some(m) = did_you_mean(typed, options.iter().copied()) {
        s.push_str(&format!(" (did you mean {m:?}?)"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_become_rules() {
        assert_eq!(
            plain("invalid value: integer `-5`, expected usize\nin `default_pool_size`\n"),
            "must be a whole number, 0 or more"
        );
        assert_eq!(
            plain("invalid type: string \"x\", expected u16\nin `port`"),
            "must be a whole number from 0 to 65535"
        );
        assert_eq!(plain("invalid type: integer `3`, expected a boolean"), "must be true or false");
        assert_eq!(
            plain("unknown variant `transacton`, expected `transaction` or `session`"),
            "must be one of transaction, session (did you mean \"transaction\"?)"
        );
        assert_eq!(
            plain("unknown variant `zzz`, expected one of `disable`, `allow`, `prefer`, `require`"),
            "must be one of disable, allow, prefer, require"
        );
        assert_eq!(
            plain("unknown duration unit \"parsecs\" in \"5 parsecs\"\nin `x`"),
            "unknown duration unit \"parsecs\" in \"5 parsecs\""
        );
    }

    #[test]
    fn suggestions_only_when_close() {
        let keys = ["default_pool_size", "min_pool_size", "listen"];
        assert_eq!(did_you_mean("defualt_pool_size", keys), Some("default_pool_size"));
        assert_eq!(did_you_mean("lisen", keys), Some("listen"));
        assert_eq!(did_you_mean("completely_else", keys), None);
    }
}
