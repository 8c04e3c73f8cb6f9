//! Read-query analysis: proves a SELECT / VALUES / TABLE / WITH statement read-only, or
//! finds what forces it to the primary (writes, locking clauses, risky calls).

use super::classify::{reasons, ClassifierConfig, SessionEffect, Statement, StatementKind};
use super::cursor::Cursor;
use super::functions::{self, FnClass, FoldedName, SessionCall};
use super::keywords::{keyword, Kw};
use super::lexer::{Token, TokenKind};

/// The previous token, as far as deciding "is `name(` a call?" needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    Start,
    LParen,
    RParen,
    Comma,
    DoubleColon,
    Dot,
    Literal,
    Operator,
    /// A non-keyword identifier or a qualified name.
    Word,
    Quoted,
    Kw(Kw),
}

/// Per-depth flags are bits of a `u64`, indexed by depth relative to the statement;
/// deeper levels simply get no flags, which only makes the scan more conservative.
#[derive(Debug, Clone, Copy)]
enum Flag {
    /// In a FROM list, where `item alias(cols)` is a column list, not a call.
    From,
    /// In a WITH list before the main statement, where `name(cols)` is a column list.
    With,
}

struct Scan<'c> {
    cfg: &'c ClassifierConfig,
    base: u32,
    prev: Prev,
    from: u64,
    with: u64,
    saw_with: bool,
    reason: Option<&'static str>,
    kind: StatementKind,
    pin: Option<&'static str>,
    /// Nothing seen so far can leave state in the session (see `Statement::pure`).
    pure: bool,
    sets_config: bool,
}

/// Analyses a query whose first token `first` (at parenthesis depth `base`) has been
/// consumed; reads to the end of the statement.
pub(super) fn analyze(cur: &mut Cursor, cfg: &ClassifierConfig, first: Token, base: u32) -> Statement {
    let mut scan = Scan::new(cfg, base, StatementKind::Select, Prev::Start);
    scan.feed(cur, first);
    while let Some(t) = cur.advance() {
        scan.feed(cur, t);
    }
    let st = match scan.reason {
        Some(reason) => Statement::primary(reason, scan.kind),
        None => Statement::replica(reasons::READ, scan.kind),
    };
    scan.finish(st)
}

/// Analyses an INSERT, UPDATE or DELETE whose keyword has been consumed, for what it calls:
/// it always goes to the primary, but is pure only when every call is a built-in
/// side-effect-free function.
pub(super) fn analyze_write(cur: &mut Cursor, cfg: &ClassifierConfig, base: u32, kind: StatementKind) -> Statement {
    // `INSERT INTO t (cols)`: the name after INTO is a table, not a call.
    let mut scan = Scan::new(cfg, base, kind, Prev::Kw(Kw::Into));
    while let Some(t) = cur.advance() {
        scan.feed(cur, t);
    }
    scan.finish(Statement::primary(reasons::WRITE, kind))
}

impl<'c> Scan<'c> {
    fn new(cfg: &'c ClassifierConfig, base: u32, kind: StatementKind, prev: Prev) -> Self {
        Scan {
            cfg,
            base,
            prev,
            from: 0,
            with: 0,
            saw_with: false,
            reason: None,
            kind,
            pin: None,
            pure: true,
            sets_config: false,
        }
    }

    fn finish(self, mut st: Statement) -> Statement {
        st.pure = self.pure && self.pin.is_none();
        st.sets_config = self.sets_config;
        if let Some(pin) = self.pin {
            st.session = SessionEffect::Pin(pin);
        }
        st
    }

    fn feed(&mut self, cur: &mut Cursor, t: Token) {
        self.prev = match t.kind {
            TokenKind::Ident => return self.word(cur, t),
            TokenKind::QuotedIdent => return self.name(cur, t),
            TokenKind::LParen => {
                self.open(cur.depth());
                Prev::LParen
            }
            TokenKind::RParen => Prev::RParen,
            TokenKind::Comma => Prev::Comma,
            TokenKind::DoubleColon => Prev::DoubleColon,
            TokenKind::Dot => Prev::Dot,
            TokenKind::String | TokenKind::DollarString | TokenKind::Number | TokenKind::Param => Prev::Literal,
            TokenKind::Operator | TokenKind::Colon | TokenKind::LBracket | TokenKind::RBracket => Prev::Operator,
            // A `;` inside parentheses or a byte the server rejects: not a valid query.
            TokenKind::Semicolon | TokenKind::Other | TokenKind::Error | TokenKind::Eof => {
                self.flag(reasons::UNSURE);
                Prev::Operator
            }
        };
    }

    fn flag(&mut self, reason: &'static str) {
        if reason == reasons::UNSURE {
            self.pure = false;
        }
        self.reason.get_or_insert(reason);
    }

    fn pin(&mut self, pin: &'static str) {
        self.pin.get_or_insert(pin);
    }

    fn mask(&self, depth: u32) -> u64 {
        depth.checked_sub(self.base).and_then(|rel| 1u64.checked_shl(rel)).unwrap_or(0)
    }

    fn bits(&mut self, flag: Flag) -> &mut u64 {
        match flag {
            Flag::From => &mut self.from,
            Flag::With => &mut self.with,
        }
    }

    fn has(&self, flag: Flag, depth: u32) -> bool {
        let bits = match flag {
            Flag::From => self.from,
            Flag::With => self.with,
        };
        bits & self.mask(depth) != 0
    }

    fn set(&mut self, flag: Flag, depth: u32) {
        let m = self.mask(depth);
        *self.bits(flag) |= m;
    }

    fn clear(&mut self, flag: Flag, depth: u32) {
        let m = self.mask(depth);
        *self.bits(flag) &= !m;
    }

    /// `depth` is the depth inside the new parenthesis.
    fn open(&mut self, depth: u32) {
        // `WITH x AS (...) (SELECT ...)`: a `(` right after a CTE body starts the main query.
        if self.prev == Prev::RParen {
            self.clear(Flag::With, depth.saturating_sub(1));
        }
        self.clear(Flag::With, depth);
        self.clear(Flag::From, depth);
    }

    fn word(&mut self, cur: &mut Cursor, t: Token) {
        let next = cur.peek().map(|n| n.kind);
        if next == Some(TokenKind::Dot) {
            return self.qualified(cur, t);
        }
        // After `AS` or `.` a keyword is only a label or a field name.
        let entry = keyword(cur.bytes(t)).filter(|_| !matches!(self.prev, Prev::Kw(Kw::As) | Prev::Dot));
        let mut prev = entry.map_or(Prev::Word, |e| Prev::Kw(e.kw));
        let grammar = entry.is_some_and(|e| e.not_func);
        let call_pos = next == Some(TokenKind::LParen) && self.call_position(cur.depth());
        if call_pos && grammar && !functions::is_syntax_before_paren(cur.bytes(t)) {
            // A keyword the classifier reads as grammar that PostgreSQL lets name a function
            // (`freeze(1)`, `filter (...)`): fine for routing, not proven pure.
            self.pure = false;
        }
        if call_pos && !grammar {
            let mut name = FoldedName::default();
            name.push(cur.bytes(t), false);
            if self.call(cur, &name) {
                prev = Prev::RParen;
            }
        }
        if let Some(e) = entry {
            self.keyword(cur, e.kw);
        }
        self.prev = prev;
    }

    fn name(&mut self, cur: &mut Cursor, t: Token) {
        match cur.peek().map(|n| n.kind) {
            Some(TokenKind::Dot) => self.qualified(cur, t),
            Some(TokenKind::LParen) if self.call_position(cur.depth()) => {
                let mut name = FoldedName::default();
                name.push(cur.bytes(t), true);
                let consumed = self.call(cur, &name);
                self.prev = if consumed { Prev::RParen } else { Prev::Quoted };
            }
            _ => self.prev = Prev::Quoted,
        }
    }

    /// `a.b.c` (any part quoted); keywords inside qualified names are plain names.
    fn qualified(&mut self, cur: &mut Cursor, first: Token) {
        let call_pos = self.call_position(cur.depth());
        let mut name = FoldedName::default();
        name.push(cur.bytes(first), first.kind == TokenKind::QuotedIdent);
        while cur.peek().is_some_and(|n| n.kind == TokenKind::Dot) {
            cur.advance();
            match cur.peek() {
                Some(n) if matches!(n.kind, TokenKind::Ident | TokenKind::QuotedIdent) => {
                    cur.advance();
                    name.push(cur.bytes(n), n.kind == TokenKind::QuotedIdent);
                }
                // `t.*`, `(x).*`
                _ => {
                    self.prev = Prev::Dot;
                    return;
                }
            }
        }
        self.prev = Prev::Word;
        if call_pos && cur.peek().is_some_and(|n| n.kind == TokenKind::LParen) && self.call(cur, &name) {
            self.prev = Prev::RParen;
        }
    }

    /// Whether `name(` at `depth` after `self.prev` is a function call. When in doubt it
    /// says yes: a call of an unknown function only costs a trip to the primary.
    fn call_position(&self, depth: u32) -> bool {
        // Types (`::numeric(10,2)`, `AS varchar(20)`), aliases (`AS t(a)`), sample methods,
        // the target of INSERT INTO / SELECT INTO.
        if matches!(self.prev, Prev::DoubleColon | Prev::Kw(Kw::As | Kw::Tablesample | Kw::Into)) {
            return false;
        }
        if self.has(Flag::With, depth) {
            return false;
        }
        // `FROM f(x) g(i)`, `FROM t x(a, b)`: an alias column list follows a FROM item.
        let after_item = matches!(self.prev, Prev::RParen | Prev::Word | Prev::Quoted);
        !(after_item && self.has(Flag::From, depth))
    }

    /// Records what calling `name` means; returns whether the argument list was consumed.
    fn call(&mut self, cur: &mut Cursor, name: &FoldedName) -> bool {
        match functions::classify_call(name, self.cfg) {
            FnClass::Safe => {}
            FnClass::SideEffect => self.flag(reasons::SIDE_EFFECT_FUNCTION),
            FnClass::Unknown => self.flag(reasons::UNKNOWN_FUNCTION),
        }
        let session = functions::session_call(name.last());
        if !functions::is_pure_call(name) && session != SessionCall::SetConfig {
            self.pure = false;
        }
        match session {
            SessionCall::None => false,
            SessionCall::AdvisoryLock => {
                self.pin("advisory_lock");
                false
            }
            SessionCall::Lasting(reason) => {
                self.pin(reason);
                false
            }
            SessionCall::SetConfig => {
                // set_config(name, value, true) lasts for the transaction only; its arguments
                // are not scanned for calls here, so only literals and parameters keep it pure.
                let builtin = name.qualifier().is_none_or(|q| q == b"pg_catalog");
                let SetConfigScan { pin, calls, custom } = set_config_scan(cur);
                self.sets_config |= !custom;
                if let Some(pin) = pin {
                    self.pin(pin);
                }
                if !builtin || calls {
                    self.pure = false;
                }
                true
            }
        }
    }

    fn keyword(&mut self, cur: &mut Cursor, kw: Kw) {
        let depth = cur.depth();
        let locking = matches!(self.prev, Prev::Kw(Kw::For) | Prev::Kw(Kw::Key));
        match kw {
            Kw::Select | Kw::Values | Kw::Table => {
                self.clear(Flag::With, depth);
                self.clear(Flag::From, depth);
            }
            Kw::Update | Kw::Share if locking => self.flag(reasons::LOCKING_READ),
            Kw::Insert | Kw::Update | Kw::Delete | Kw::Merge => self.write(kw, depth),
            Kw::From | Kw::Join => self.set(Flag::From, depth),
            Kw::Where
            | Kw::On
            | Kw::Using
            | Kw::Group
            | Kw::Having
            | Kw::Order
            | Kw::Limit
            | Kw::Offset
            | Kw::Fetch
            | Kw::Window
            | Kw::For
            | Kw::Union
            | Kw::Intersect
            | Kw::Except
            | Kw::Returning
            | Kw::Set => self.clear(Flag::From, depth),
            Kw::With if matches!(self.prev, Prev::Start | Prev::LParen) => {
                self.set(Flag::With, depth);
                self.saw_with = true;
            }
            // Only the outermost SELECT can write into a new table; deeper INTO is a
            // syntax error or part of an INSERT/MERGE already flagged.
            Kw::Into if depth == self.base => self.select_into(cur),
            _ => {}
        }
    }

    /// INSERT/UPDATE/DELETE/MERGE met while scanning a query.
    fn write(&mut self, kw: Kw, depth: u32) {
        if depth == self.base && self.has(Flag::With, depth) {
            // Main statement of `WITH ... INSERT/UPDATE/DELETE/MERGE`.
            self.clear(Flag::With, depth);
            self.kind = match kw {
                Kw::Insert => StatementKind::Insert,
                Kw::Update => StatementKind::Update,
                Kw::Delete => StatementKind::Delete,
                _ => StatementKind::Other,
            };
            self.flag(reasons::WRITE);
        } else if depth > self.base && self.saw_with {
            self.flag(reasons::WRITE_CTE);
        } else {
            // A bare keyword where no statement can start, e.g. a column named `update`.
            self.flag(reasons::UNSURE);
        }
    }

    fn select_into(&mut self, cur: &mut Cursor) {
        if self.kind != StatementKind::Select {
            return;
        }
        self.flag(reasons::SELECT_INTO);
        self.pure = false;
        let temp =
            cur.peek().is_some_and(|n| ["temp", "temporary", "local", "global"].iter().any(|w| cur.is_word(n, w)));
        if temp {
            self.pin("temp_table");
        }
    }
}

/// Consumes a `set_config(...)` argument list; the call pins the session unless its
/// third argument is literally true (transaction-local). Also spots advisory locks
/// nested in the arguments.
pub(super) fn set_config_pin(cur: &mut Cursor) -> Option<&'static str> {
    set_config_scan(cur).pin
}

/// What a `set_config(...)` argument list does.
struct SetConfigScan {
    /// Why it pins, if it does.
    pin: Option<&'static str>,
    /// The arguments may call a function.
    calls: bool,
    /// The setting is named by one plain literal with a dot: a custom setting (`app.tenant`),
    /// which changes nothing in how PostgreSQL parses statements.
    custom: bool,
}

/// [`set_config_pin`], whether the arguments contain anything that may be a call (a `(` after a
/// name), and whether the setting is a custom one.
fn set_config_scan(cur: &mut Cursor) -> SetConfigScan {
    if !cur.peek().is_some_and(|t| t.kind == TokenKind::LParen) {
        return SetConfigScan { pin: Some("set_config"), calls: true, custom: false };
    }
    cur.advance();
    let inside = cur.depth();
    let (mut arg, mut third_len, mut local, mut inner_pin, mut calls) = (0u32, 0u32, false, None, false);
    // The setting's name: one plain string literal other than 'seed' (the random seed outlives
    // any reset, even set transaction-locally); anything else may spell it.
    let (mut first_len, mut named_plainly, mut custom) = (0u32, false, false);
    while let Some(t) = cur.peek() {
        if t.kind == TokenKind::RParen && cur.depth() == inside {
            cur.advance();
            break;
        }
        cur.advance();
        if t.kind == TokenKind::Comma && cur.depth() == inside {
            arg = arg.saturating_add(1);
            continue;
        }
        if arg == 0 {
            first_len = first_len.saturating_add(1);
            let text = cur.bytes(t);
            named_plainly =
                t.kind == TokenKind::String && text.first() == Some(&b'\'') && !text.eq_ignore_ascii_case(b"'seed'");
            let name = text.strip_prefix(b"'").and_then(|n| n.strip_suffix(b"'"));
            let name = name.and_then(|n| std::str::from_utf8(n).ok());
            custom = name.is_some_and(|n| n.contains('.'));
            if name.is_some_and(super::session::splits_strings) {
                inner_pin = inner_pin.or(Some("standard_conforming_strings"));
            } else if name.is_some_and(|n| n.eq_ignore_ascii_case("client_encoding")) {
                inner_pin = inner_pin.or(Some("client_encoding"));
            } else if name.is_some_and(|n| n.eq_ignore_ascii_case("search_path")) {
                // Even for one transaction: it may let a user's function pass for a built-in.
                inner_pin = inner_pin.or(Some("set_config"));
            }
        }
        if arg == 2 {
            third_len = third_len.saturating_add(1);
            local = is_true_literal(cur, t);
        }
        inner_pin = inner_pin.or(match call_of(cur, t) {
            SessionCall::AdvisoryLock => Some("advisory_lock"),
            SessionCall::Lasting(reason) => Some(reason),
            SessionCall::SetConfig | SessionCall::None => None,
        });
        calls |= matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent | TokenKind::DoubleColon)
            && cur.peek().is_some_and(|n| n.kind == TokenKind::LParen);
        // A cast may run a user function too.
        calls |= t.kind == TokenKind::DoubleColon;
    }
    if let Some(pin) = inner_pin {
        return SetConfigScan { pin: Some(pin), calls: true, custom: false };
    }
    if !(first_len == 1 && named_plainly) {
        return SetConfigScan { pin: Some("setseed"), calls, custom: false };
    }
    let transaction_local = arg == 2 && third_len == 1 && local;
    SetConfigScan { pin: (!transaction_local).then_some("set_config"), calls, custom }
}

/// What `t` does to the session if it is the name of a call (a `(` follows), else nothing.
fn call_of(cur: &mut Cursor, t: Token) -> SessionCall {
    if !matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent)
        || !cur.peek().is_some_and(|n| n.kind == TokenKind::LParen)
    {
        return SessionCall::None;
    }
    let mut name = FoldedName::default();
    name.push(cur.bytes(t), t.kind == TokenKind::QuotedIdent);
    functions::session_call(name.last())
}

fn is_true_literal(cur: &Cursor, t: Token) -> bool {
    match t.kind {
        TokenKind::Ident => cur.is_word(t, "true"),
        TokenKind::String => {
            let text = cur.bytes(t);
            let inner = text.strip_prefix(b"'").and_then(|s| s.strip_suffix(b"'")).unwrap_or_default();
            ["t", "true", "on", "yes", "y", "1"].iter().any(|w| inner.eq_ignore_ascii_case(w.as_bytes()))
        }
        _ => false,
    }
}

/// Consumes the rest of a statement that is not a query, looking only for calls that
/// leave state in the session (advisory locks, session-wide `set_config`).
pub(super) fn scan_pins(cur: &mut Cursor) -> Option<&'static str> {
    let mut pin = None;
    while let Some(t) = cur.advance() {
        let found = match call_of(cur, t) {
            SessionCall::AdvisoryLock => Some("advisory_lock"),
            SessionCall::SetConfig => set_config_pin(cur),
            SessionCall::Lasting(reason) => Some(reason),
            SessionCall::None => None,
        };
        pin = pin.or(found);
    }
    pin
}
