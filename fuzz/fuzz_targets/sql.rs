//! Fuzz target `sql`: the SQL lexer and classifier (`router::classify`) and the quick
//! `plain_statement` and `plain_class` checks, which must agree with it, on arbitrary text. The first byte picks
//! the classifier settings; the rest is the SQL, lossily decoded as the session decodes it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgshift::router::{classify, plain_class, plain_sample, plain_statement, ClassifierConfig, SessionEffect, StatementKind, Target};

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
    // What the quick look lets past the classifier, the classifier finds no session effect in,
    // whatever the settings. The quick look refuses `(` `;` `&` `temp` and comments anywhere,
    // quoted or not, so even text the classifier cannot read (an unterminated quote) is safe. The two
    // shapes it reads itself, an INSERT's literal rows and a bare BEGIN/COMMIT/ROLLBACK, the
    // classifier must read as one pure statement of that kind. (Query and Parse texts end at
    // their first NUL, so none holds one.)
    // What routing takes for a plain statement without a parse, the classifier reads as exactly
    // what the sample of its kind reads as: one pure read for a replica, or one pure write.
    if let Some(kind) = plain_class(sql).filter(|_| !sql.contains(&0)) {
        assert_eq!(c, classify(plain_sample(kind), &ClassifierConfig::default()), "{text:?}");
    }
    if let Some(kind) = plain_statement(sql).filter(|_| !sql.contains(&0)) {
        // Text the classifier cannot read pins on the bare names `setseed` and `dblink_connect`
        // anywhere (a call may hide in a DO block's string). With no `(` in the text nothing is
        // called, which is what lets the quick look past it: that pin is the classifier's
        // caution, not a session effect the quick look missed.
        let cautious = |e: &SessionEffect| {
            !sql.contains(&b'(') && matches!(e, SessionEffect::Pin("setseed") | SessionEffect::Pin("dblink"))
        };
        let none = |e: &SessionEffect| *e == SessionEffect::None || cautious(e);
        assert!(c.statements.iter().all(|s| none(&s.session)), "{text:?}: {c:?}");
        if sql.contains(&b'(') || kind == StatementKind::Other {
            assert_eq!(c.statements.len(), 1, "{text:?}: {c:?}");
            assert_eq!(c.kind, kind, "{text:?}: {c:?}");
            assert!(c.pure(), "{text:?}: {c:?}");
        }
    }
});
