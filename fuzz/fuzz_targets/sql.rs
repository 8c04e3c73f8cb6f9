//! Fuzz target `sql`: the SQL lexer and classifier (`router::classify`) and the quick
//! `plain_statement` check, on arbitrary text. The first byte picks the classifier settings;
//! the rest is the SQL, lossily decoded as the session decodes query texts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgshift::router::{classify, plain_statement, ClassifierConfig, Target};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, sql)) = data.split_first() else {
        return;
    };
    let mut cfg = if flags & 1 == 1 {
        ClassifierConfig::with_safe_functions(["f", "myschema.g", "now"])
    } else {
        ClassifierConfig::default()
    };
    cfg.standard_conforming_strings = flags & 2 == 2;
    let text = String::from_utf8_lossy(sql);
    let c = classify(&text, &cfg);
    // A replica is chosen only for at least one statement, and without a hint only when every
    // statement may run there.
    if c.target == Target::Replica {
        assert!(!c.statements.is_empty());
        if c.hint.is_none() {
            assert!(c.statements.iter().all(|s| s.target == Target::Replica), "{text:?}: {c:?}");
        }
    }
    // Classification is a pure function of text and settings.
    assert_eq!(classify(&text, &cfg), c);
    let _ = plain_statement(sql);
});
