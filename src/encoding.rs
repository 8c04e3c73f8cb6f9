//! PostgreSQL's names for character encodings: a client may spell `client_encoding` as
//! `utf-8`, `unicode` or `eucjp`; the server reports the canonical name (`UTF8`, `EUC_JP`) and
//! drivers pick their codec from that report, so pgshift reports it the same way.

/// PostgreSQL's spelling rules (`clean_encoding_name`): letters and digits only, case ignored.
fn clean(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Every name PostgreSQL accepts (its `pg_encname_tbl`), cleaned, with the canonical name.
const NAMES: &[(&str, &str)] = &[
    ("abc", "WIN1258"),
    ("alt", "WIN866"),
    ("big5", "BIG5"),
    ("euccn", "EUC_CN"),
    ("eucjis2004", "EUC_JIS_2004"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euctw", "EUC_TW"),
    ("gb18030", "GB18030"),
    ("gbk", "GBK"),
    ("iso88591", "LATIN1"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("johab", "JOHAB"),
    ("koi8", "KOI8R"),
    ("koi8r", "KOI8R"),
    ("koi8u", "KOI8U"),
    ("latin1", "LATIN1"),
    ("latin10", "LATIN10"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("mskanji", "SJIS"),
    ("muleinternal", "MULE_INTERNAL"),
    ("shiftjis", "SJIS"),
    ("shiftjis2004", "SHIFT_JIS_2004"),
    ("sjis", "SJIS"),
    ("sqlascii", "SQL_ASCII"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("uhc", "UHC"),
    ("unicode", "UTF8"),
    ("utf8", "UTF8"),
    ("vscii", "WIN1258"),
    ("win", "WIN1251"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win932", "SJIS"),
    ("win936", "GBK"),
    ("win949", "UHC"),
    ("win950", "BIG5"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows932", "SJIS"),
    ("windows936", "GBK"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
];

/// The canonical name PostgreSQL reports for an encoding name, or None if it knows no such
/// encoding.
pub fn canonical(name: &str) -> Option<&'static str> {
    let key = clean(name);
    NAMES.binary_search_by(|(k, _)| (*k).cmp(key.as_str())).ok().map(|i| NAMES[i].1)
}

/// Whether `name` (any spelling, quoted or not) is one of PostgreSQL's client-only encodings, whose
/// two-byte characters may end in the byte of `\` or another ASCII character: the server reads
/// text after converting it, pgshift's lexer the bytes as sent, so they would split statements
/// and strings differently.
pub fn client_only(name: &str) -> bool {
    let name = name.trim().trim_matches(|c| c == '\'' || c == '"');
    matches!(canonical(name), Some("SJIS" | "SHIFT_JIS_2004" | "BIG5" | "GBK" | "GB18030" | "JOHAB" | "UHC"))
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn client_only_encodings_are_known_in_any_spelling() {
        for name in ["SJIS", "'Shift_JIS'", "\"big5\"", "windows-936", "gb18030", "JOHAB", "uhc", "'MS_KANJI'"] {
            assert!(super::client_only(name), "{name}");
        }
        for name in ["UTF8", "'utf-8'", "LATIN1", "EUC_JP", "nonsense", "DEFAULT"] {
            assert!(!super::client_only(name), "{name}");
        }
    }

    #[test]
    fn spellings_map_to_the_servers_names() {
        for (given, want) in [
            ("utf8", "UTF8"),
            ("utf-8", "UTF8"),
            ("UTF8", "UTF8"),
            ("Unicode", "UTF8"),
            ("euc-jp", "EUC_JP"),
            ("eucjp", "EUC_JP"),
            ("ISO-8859-1", "LATIN1"),
            ("sql_ascii", "SQL_ASCII"),
            ("Windows-1252", "WIN1252"),
            ("shift_jis_2004", "SHIFT_JIS_2004"),
        ] {
            assert_eq!(canonical(given), Some(want), "{given}");
        }
        assert_eq!(canonical("klingon"), None);
        assert_eq!(canonical(""), None);
    }

    #[test]
    fn the_table_is_sorted_for_binary_search() {
        assert!(super::NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
