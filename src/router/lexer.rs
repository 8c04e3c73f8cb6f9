//! Single-pass SQL tokenizer over bytes.
//!
//! It implements just enough of PostgreSQL's lexical rules (scan.l) that a keyword, a
//! semicolon or a call can never be "seen" inside a literal or a comment. Token
//! boundaries always fall on ASCII bytes, so slicing the source at them is UTF-8 safe.

/// Routing hint found in a `/* pgshift:... */` or `-- pgshift:...` comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `pgshift:primary`
    Primary,
    /// `pgshift:replica`
    Replica,
}

/// What a token is; the classifier never needs literal values, only spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword (folds to lower case).
    Ident,
    /// `"..."` or `U&"..."` identifier (case kept).
    QuotedIdent,
    /// Any `'...'` form: plain, `E''`, `U&''`, `B''`, `X''`, `N''`.
    String,
    /// `$$...$$` or `$tag$...$tag$`.
    DollarString,
    /// Numeric literal (loosely: PostgreSQL rejects the junk forms anyway).
    Number,
    /// Positional parameter `$n`.
    Param,
    /// A run of operator characters such as `->>`, `@>`, `=`, `*`.
    Operator,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `,`
    Comma,
    /// `;`
    Semicolon,
    /// `:` (array slices)
    Colon,
    /// `::` cast
    DoubleColon,
    /// `.` qualifier separator
    Dot,
    /// A byte the server's lexer would reject (`\`, a stray `$`, control characters).
    Other,
    /// Unterminated literal, quoted identifier or block comment.
    Error,
    /// End of input.
    Eof,
}

/// One token: kind plus byte span in the source. Offsets are `u32` (the lexer refuses
/// longer input) so a token fits in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// What the token is.
    pub kind: TokenKind,
    /// Byte offset of the first byte.
    pub start: u32,
    /// Byte offset one past the last byte.
    pub end: u32,
}

impl Token {
    fn new(kind: TokenKind, start: usize, end: usize) -> Self {
        // `Lexer::new` guarantees every offset fits.
        Token { kind, start: start as u32, end: end as u32 }
    }

    /// The byte range of the token in the source.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// How backslashes behave inside a `'...'` literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `'..'`, `N'..'`: literal under `standard_conforming_strings = on`, an escape when
    /// off, which the classifier cannot see.
    Standard,
    /// `E'..'`: always an escape.
    Escape,
    /// `U&'..'`, `B'..'`, `X'..'`: never an escape (U& is rejected when the setting is off).
    Verbatim,
}

/// The raw tokenizer: call [`Lexer::next_token`] until it returns `Eof`.
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    hint: Option<Hint>,
    backslash_literal: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn is_op_char(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

impl<'a> Lexer<'a> {
    /// Starts lexing `sql` from the beginning. Input over 4 GiB (far beyond
    /// PostgreSQL's 1 GB message limit) lexes as one `Error` token.
    pub fn new(sql: &'a str) -> Self {
        let fits = u32::try_from(sql.len()).is_ok();
        Lexer { src: if fits { sql.as_bytes() } else { b"'" }, pos: 0, hint: None, backslash_literal: false }
    }

    /// The routing hint seen in comments so far (`Primary` wins over `Replica`).
    pub fn hint(&self) -> Option<Hint> {
        self.hint
    }

    /// Whether a plain `'...'` literal containing a backslash was seen since the last call.
    ///
    /// Such a literal lexes differently under `standard_conforming_strings = off`, so a
    /// statement holding one cannot be proven read-only from the text alone.
    pub fn take_backslash_literal(&mut self) -> bool {
        std::mem::take(&mut self.backslash_literal)
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    /// Produces the next token. After `Error` or at the end it keeps returning `Eof`.
    pub fn next_token(&mut self) -> Token {
        if self.skip_trivia().is_none() {
            return self.error_from(self.pos);
        }
        let start = self.pos;
        let Some(c) = self.at(start) else {
            return Token::new(TokenKind::Eof, start, start);
        };
        let next = self.at(start + 1);
        self.pos = start + 1;
        let kind = match c {
            b'\'' => self.string(start + 1, Quote::Standard),
            b'"' => self.quoted_ident(start + 1),
            b'$' => self.dollar(start),
            b'(' => TokenKind::LParen,
            b')' => TokenKind::RParen,
            b'[' => TokenKind::LBracket,
            b']' => TokenKind::RBracket,
            b',' => TokenKind::Comma,
            b';' => TokenKind::Semicolon,
            b':' if next == Some(b':') => {
                self.pos = start + 2;
                TokenKind::DoubleColon
            }
            b':' => TokenKind::Colon,
            b'.' if next.is_some_and(|b| b.is_ascii_digit()) => self.number(start),
            b'.' => TokenKind::Dot,
            b'0'..=b'9' => self.number(start),
            b'e' | b'E' if next == Some(b'\'') => self.string(start + 2, Quote::Escape),
            b'n' | b'N' if next == Some(b'\'') => self.string(start + 2, Quote::Standard),
            b'b' | b'B' | b'x' | b'X' if next == Some(b'\'') => self.string(start + 2, Quote::Verbatim),
            b'u' | b'U' if next == Some(b'&') && self.at(start + 2) == Some(b'\'') => {
                self.string(start + 3, Quote::Verbatim)
            }
            b'u' | b'U' if next == Some(b'&') && self.at(start + 2) == Some(b'"') => self.quoted_ident(start + 3),
            c if is_ident_start(c) => self.ident(start),
            c if is_op_char(c) => self.operator(start),
            _ => TokenKind::Other,
        };
        if kind == TokenKind::Error {
            return self.error_from(start);
        }
        Token::new(kind, start, self.pos)
    }

    fn error_from(&mut self, start: usize) -> Token {
        self.pos = self.src.len();
        Token::new(TokenKind::Error, start, self.pos)
    }

    /// Skips whitespace and comments; `None` means an unterminated block comment.
    fn skip_trivia(&mut self) -> Option<()> {
        loop {
            while self.at(self.pos).is_some_and(is_space) {
                self.pos += 1;
            }
            match (self.at(self.pos), self.at(self.pos + 1)) {
                (Some(b'-'), Some(b'-')) => {
                    let body = self.pos + 2;
                    let rest = self.src.get(body..).unwrap_or_default();
                    let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                    self.note_comment(body, body + len);
                    self.pos = body + len;
                }
                (Some(b'/'), Some(b'*')) => self.block_comment()?,
                _ => return Some(()),
            }
        }
    }

    /// Block comments nest in PostgreSQL, unlike in the SQL standard.
    fn block_comment(&mut self) -> Option<()> {
        let body = self.pos + 2;
        let mut i = body;
        let mut depth = 1u32;
        while depth > 0 {
            match (self.at(i)?, self.at(i + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        self.note_comment(body, i.saturating_sub(2));
        self.pos = i;
        Some(())
    }

    fn note_comment(&mut self, from: usize, to: usize) {
        let body = self.src.get(from..to).unwrap_or_default();
        match detect_hint(body) {
            Some(Hint::Primary) => self.hint = Some(Hint::Primary),
            Some(Hint::Replica) if self.hint.is_none() => self.hint = Some(Hint::Replica),
            _ => {}
        }
    }

    /// `'...'` with `''` escapes, plus backslash escapes for `E''`.
    fn string(&mut self, body: usize, quote: Quote) -> TokenKind {
        let mut i = body;
        loop {
            match self.at(i) {
                None => return TokenKind::Error,
                Some(b'\\') if quote == Quote::Escape => i += 2,
                Some(b'\\') => {
                    self.backslash_literal |= quote == Quote::Standard;
                    i += 1;
                }
                Some(b'\'') if self.at(i + 1) == Some(b'\'') => i += 2,
                Some(b'\'') => {
                    self.pos = i + 1;
                    return TokenKind::String;
                }
                Some(_) => i += 1,
            }
        }
    }

    fn quoted_ident(&mut self, body: usize) -> TokenKind {
        let mut i = body;
        loop {
            match self.at(i) {
                None => return TokenKind::Error,
                Some(b'"') if self.at(i + 1) == Some(b'"') => i += 2,
                Some(b'"') => {
                    self.pos = i + 1;
                    return TokenKind::QuotedIdent;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// `$n` parameter, `$tag$...$tag$` literal, or a stray `$`.
    fn dollar(&mut self, start: usize) -> TokenKind {
        let rest = self.src.get(start + 1..).unwrap_or_default();
        if rest.first().is_some_and(|b| b.is_ascii_digit()) {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            self.pos = start + 1 + digits;
            return TokenKind::Param;
        }
        let tag_len = if rest.first().is_some_and(|&b| is_ident_start(b)) {
            rest.iter().take_while(|&&b| is_ident_cont(b) && b != b'$').count()
        } else {
            0
        };
        if rest.get(tag_len) != Some(&b'$') {
            return TokenKind::Other;
        }
        let delim_end = start + tag_len + 2;
        let delim = self.src.get(start..delim_end).unwrap_or_default();
        if delim.is_empty() {
            return TokenKind::Other;
        }
        let body = self.src.get(delim_end..).unwrap_or_default();
        match body.windows(delim.len()).position(|w| w == delim) {
            Some(at) => {
                self.pos = delim_end + at + delim.len();
                TokenKind::DollarString
            }
            None => TokenKind::Error,
        }
    }

    fn ident(&mut self, start: usize) -> TokenKind {
        let rest = self.src.get(start..).unwrap_or_default();
        self.pos = start + rest.iter().take_while(|&&b| is_ident_cont(b)).count();
        TokenKind::Ident
    }

    /// Loose number scan: digits, `_`, letters (hex, exponent, junk), one `.`, exponent sign.
    fn number(&mut self, start: usize) -> TokenKind {
        let word = |lx: &Self, i: usize| {
            let rest = lx.src.get(i..).unwrap_or_default();
            i + rest.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count()
        };
        let mut i = if self.at(start) == Some(b'.') { start } else { word(self, start) };
        if self.at(i) == Some(b'.') && self.at(i + 1) != Some(b'.') {
            i = word(self, i + 1);
        }
        let exp = i > start && matches!(self.at(i - 1), Some(b'e' | b'E'));
        if exp && matches!(self.at(i), Some(b'+' | b'-')) {
            i = word(self, i + 1);
        }
        self.pos = i;
        TokenKind::Number
    }

    /// Operator runs stop where a comment starts, as in the server's lexer.
    fn operator(&mut self, start: usize) -> TokenKind {
        let mut i = start + 1;
        while let Some(b) = self.at(i) {
            let next = self.at(i + 1);
            let comment = (b == b'-' && next == Some(b'-')) || (b == b'/' && next == Some(b'*'));
            if !is_op_char(b) || comment {
                break;
            }
            i += 1;
        }
        self.pos = i;
        TokenKind::Operator
    }
}

/// Finds `pgshift:primary` / `pgshift:replica` (any case, blanks around `:`) in a comment body.
pub fn detect_hint(body: &[u8]) -> Option<Hint> {
    let mut found = None;
    let mut i = 0;
    while let Some(rest) = body.get(i..) {
        let Some(at) = rest.windows(7).position(|w| w.eq_ignore_ascii_case(b"pgshift")) else {
            break;
        };
        let after = rest.get(at + 7..).unwrap_or_default();
        let after = trim_start(after);
        if let Some(value) = after.strip_prefix(b":") {
            let value = trim_start(value);
            let word_len = value.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            let word = value.get(..word_len).unwrap_or_default();
            if word.eq_ignore_ascii_case(b"primary") {
                return Some(Hint::Primary);
            }
            if word.eq_ignore_ascii_case(b"replica") {
                found = Some(Hint::Replica);
            }
        }
        i += at + 7;
    }
    found
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| is_space(c)).count();
    b.get(n..).unwrap_or_default()
}
