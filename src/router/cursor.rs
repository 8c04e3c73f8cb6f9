//! Statement-aware token stream over the lexer: parenthesis depth, statement ends,
//! one token of lookahead, and a record of malformed input.

use super::lexer::{Hint, Lexer, Token, TokenKind};

/// Token stream for one statement at a time: tracks parenthesis depth, stops at a
/// top-level `;` (or at a closing `)` below `floor`), and records malformed input.
pub struct Cursor<'a> {
    lex: Lexer<'a>,
    src: &'a str,
    peeked: Option<Token>,
    depth: u32,
    floor: u32,
    /// Open `BEGIN ATOMIC ... END` bodies (and `CASE ... END` inside them), whose
    /// semicolons do not end the enclosing `CREATE FUNCTION`.
    atomic: u32,
    track_atomic: bool,
    after_begin: bool,
    broken: bool,
    backslash_is_ambiguous: bool,
}

impl<'a> Cursor<'a> {
    /// Starts at the beginning of `sql`. With `backslash_is_ambiguous`, a plain literal
    /// holding a backslash counts as malformed (see [`Lexer::take_backslash_literal`]).
    pub fn new(sql: &'a str, backslash_is_ambiguous: bool) -> Self {
        Cursor {
            lex: Lexer::new(sql),
            src: sql,
            peeked: None,
            depth: 0,
            floor: 0,
            atomic: 0,
            track_atomic: false,
            after_begin: false,
            broken: false,
            backslash_is_ambiguous,
        }
    }

    #[inline]
    fn raw_peek(&mut self) -> Token {
        if let Some(t) = self.peeked {
            return t;
        }
        let mut t = self.lex.next_token();
        if t.kind == TokenKind::Error {
            self.broken = true;
            t.kind = TokenKind::Eof;
        }
        self.peeked = Some(t);
        t
    }

    /// Skips empty statements; `false` at end of input. Resets per-statement state.
    pub fn begin_statement(&mut self) -> bool {
        self.depth = 0;
        self.floor = 0;
        self.atomic = 0;
        self.track_atomic = false;
        self.after_begin = false;
        loop {
            match self.raw_peek().kind {
                TokenKind::Eof => return false,
                TokenKind::Semicolon => self.peeked = None,
                _ => return true,
            }
        }
    }

    /// Next token of the current statement without consuming it.
    #[inline]
    pub fn peek(&mut self) -> Option<Token> {
        let t = self.raw_peek();
        let ends = match t.kind {
            TokenKind::Eof => true,
            TokenKind::Semicolon => self.depth == 0 && self.atomic == 0,
            TokenKind::RParen => self.floor > 0 && self.depth <= self.floor,
            _ => false,
        };
        (!ends).then_some(t)
    }

    /// Consumes the next token of the current statement.
    #[inline]
    pub fn advance(&mut self) -> Option<Token> {
        let t = self.peek()?;
        self.peeked = None;
        match t.kind {
            TokenKind::LParen => self.depth = self.depth.saturating_add(1),
            TokenKind::RParen if self.depth == 0 => self.broken = true,
            TokenKind::RParen => self.depth = self.depth.saturating_sub(1),
            TokenKind::Ident if self.track_atomic => self.note_atomic(t),
            _ => {}
        }
        Some(t)
    }

    fn note_atomic(&mut self, t: Token) {
        let word = self.bytes(t);
        let opens = (self.after_begin && word.eq_ignore_ascii_case(b"atomic"))
            || (self.atomic > 0 && word.eq_ignore_ascii_case(b"case"));
        if opens {
            self.atomic = self.atomic.saturating_add(1);
        } else if word.eq_ignore_ascii_case(b"end") {
            self.atomic = self.atomic.saturating_sub(1);
        }
        self.after_begin = word.eq_ignore_ascii_case(b"begin");
    }

    /// Makes `BEGIN ATOMIC ... END` bodies part of this statement (for `CREATE`).
    pub fn track_atomic(&mut self) {
        self.track_atomic = true;
    }

    /// Current parenthesis depth.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Makes a `)` closing depth `floor` end the statement; returns the old floor.
    pub fn set_floor(&mut self, floor: u32) -> u32 {
        std::mem::replace(&mut self.floor, floor)
    }

    /// Consumes everything left in the statement and its terminating `;`.
    /// A statement still inside parentheses or a `BEGIN ATOMIC` body at the end of
    /// the input is malformed.
    pub fn finish_statement(&mut self) {
        while self.advance().is_some() {}
        if self.raw_peek().kind == TokenKind::Semicolon {
            self.peeked = None;
        } else if self.depth > 0 || self.atomic > 0 {
            self.broken = true;
        }
    }

    /// Whether malformed input (unterminated literal or body, unbalanced parenthesis,
    /// ambiguous backslash literal) was seen since the last call.
    pub fn take_broken(&mut self) -> bool {
        let backslash = self.lex.take_backslash_literal() && self.backslash_is_ambiguous;
        std::mem::take(&mut self.broken) || backslash
    }

    /// Routing hint from comments lexed so far.
    pub fn hint(&self) -> Option<Hint> {
        self.lex.hint()
    }

    /// Source bytes of a token.
    #[inline]
    pub fn bytes(&self, t: Token) -> &'a [u8] {
        self.src.as_bytes().get(t.range()).unwrap_or_default()
    }

    /// Source text from the start of `first` to the end of `last` (empty if reversed).
    pub fn text(&self, first: Token, last: Token) -> &'a str {
        let range = first.start as usize..last.end as usize;
        self.src.get(range).unwrap_or_default()
    }

    /// Whether `t` is the unquoted keyword `kw` (given in lower case).
    pub fn is_word(&self, t: Token, kw: &str) -> bool {
        t.kind == TokenKind::Ident && self.bytes(t).eq_ignore_ascii_case(kw.as_bytes())
    }

    /// Whether the next token is the unquoted keyword `kw`; consumes it if so.
    pub fn eat_word(&mut self, kw: &str) -> bool {
        let hit = self.peek().is_some_and(|t| self.is_word(t, kw));
        if hit {
            self.advance();
        }
        hit
    }
}
