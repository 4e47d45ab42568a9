//! Tokens of the IoT Hub query language, each with where it starts, so errors can say "line 1, column 31".

use crate::error::{Position, QueryError};

#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    /// A bare word: a keyword, a function name or a property name; the parser decides which.
    Word(String),
    Str(String),
    Number(f64),
    Star,
    Comma,
    Dot,
    LeftParen,
    RightParen,
    LeftBracket,
    RightBracket,
    Plus,
    Minus,
    Slash,
    Percent,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    End,
}

impl Token {
    /// How errors name the token.
    pub fn describe(&self) -> String {
        match self {
            Token::Word(word) => format!("'{word}'"),
            Token::Str(_) => "a string".into(),
            Token::Number(_) => "a number".into(),
            Token::End => "the end of the query".into(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Token::Star => "*",
            Token::Comma => ",",
            Token::Dot => ".",
            Token::LeftParen => "(",
            Token::RightParen => ")",
            Token::LeftBracket => "[",
            Token::RightBracket => "]",
            Token::Plus => "+",
            Token::Minus => "-",
            Token::Slash => "/",
            Token::Percent => "%",
            Token::Equal => "=",
            Token::NotEqual => "!=",
            Token::Less => "<",
            Token::LessEqual => "<=",
            Token::Greater => ">",
            Token::GreaterEqual => ">=",
            _ => "",
        }
    }

    /// True for a word equal to `keyword`, ignoring case (keywords are case-insensitive).
    pub fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(word) if word.eq_ignore_ascii_case(keyword))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spanned {
    pub token: Token,
    pub at: Position,
}

pub fn tokenize(text: &str) -> Result<Vec<Spanned>, QueryError> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        index: 0,
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    loop {
        lexer.skip_whitespace();
        let at = lexer.position();
        let Some(c) = lexer.peek() else {
            tokens.push(Spanned { token: Token::End, at });
            return Ok(tokens);
        };
        let token = match c {
            '\'' | '"' => lexer.string(c, at)?,
            '0'..='9' => lexer.number(at)?,
            c if is_word_start(c) => lexer.word(),
            _ => lexer.symbol(c, at)?,
        };
        tokens.push(Spanned { token, at });
    }
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '@' || c == '#'
}

struct Lexer {
    chars: Vec<char>,
    index: usize,
    line: usize,
    column: usize,
}

impl Lexer {
    fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.index).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.index + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.index += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn word(&mut self) -> Token {
        let mut word = String::new();
        while let Some(c) = self.peek().filter(|c| is_word_char(*c)) {
            word.push(c);
            self.bump();
        }
        Token::Word(word)
    }

    fn string(&mut self, quote: char, at: Position) -> Result<Token, QueryError> {
        self.bump();
        let mut text = String::new();
        loop {
            let escape_at = self.position();
            match self.bump() {
                None => return Err(QueryError::at(at, "this string is not closed")),
                Some(c) if c == quote => return Ok(Token::Str(text)),
                Some('\\') => {
                    let escaped = match self.bump() {
                        Some('\'') => '\'',
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('/') => '/',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        Some('u') => self.unicode_escape(escape_at)?,
                        _ => return Err(QueryError::at(escape_at, "unknown escape sequence in a string")),
                    };
                    text.push(escaped);
                }
                Some(c) => text.push(c),
            }
        }
    }

    fn unicode_escape(&mut self, at: Position) -> Result<char, QueryError> {
        let mut code = 0u32;
        for _ in 0..4 {
            let digit = self
                .bump()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| QueryError::at(at, "\\u must be followed by four hexadecimal digits"))?;
            code = code * 16 + digit;
        }
        char::from_u32(code).ok_or_else(|| QueryError::at(at, "\\u escape is not a character"))
    }

    fn number(&mut self, at: Position) -> Result<Token, QueryError> {
        if self.peek() == Some('0') && matches!(self.peek_at(1), Some('x' | 'X')) {
            self.bump();
            self.bump();
            let mut digits = String::new();
            while let Some(c) = self.peek().filter(char::is_ascii_hexdigit) {
                digits.push(c);
                self.bump();
            }
            let value =
                i64::from_str_radix(&digits, 16).map_err(|_| QueryError::at(at, "invalid hexadecimal number"))?;
            return Ok(Token::Number(value as f64));
        }
        let mut text = String::new();
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            text.push(c);
            self.bump();
        }
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            text.push('.');
            self.bump();
            while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                text.push(c);
                self.bump();
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let sign = matches!(self.peek_at(1), Some('+' | '-'));
            let digit_at = if sign { 2 } else { 1 };
            if self.peek_at(digit_at).is_some_and(|c| c.is_ascii_digit()) {
                for _ in 0..digit_at {
                    text.push(self.bump().unwrap_or('e'));
                }
                while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                    text.push(c);
                    self.bump();
                }
            }
        }
        if self.peek().is_some_and(is_word_start) {
            return Err(QueryError::at(self.position(), "a number must not run into a name"));
        }
        text.parse::<f64>()
            .map(Token::Number)
            .map_err(|_| QueryError::at(at, "invalid number"))
    }

    fn symbol(&mut self, c: char, at: Position) -> Result<Token, QueryError> {
        self.bump();
        let next = self.peek();
        let mut two = |token: Token| {
            self.bump();
            token
        };
        Ok(match (c, next) {
            ('<', Some('=')) => two(Token::LessEqual),
            ('<', Some('>')) => two(Token::NotEqual),
            ('>', Some('=')) => two(Token::GreaterEqual),
            ('!', Some('=')) => two(Token::NotEqual),
            ('=', Some('=')) => two(Token::Equal),
            ('<', _) => Token::Less,
            ('>', _) => Token::Greater,
            ('=', _) => Token::Equal,
            ('*', _) => Token::Star,
            (',', _) => Token::Comma,
            ('.', _) => Token::Dot,
            ('(', _) => Token::LeftParen,
            (')', _) => Token::RightParen,
            ('[', _) => Token::LeftBracket,
            (']', _) => Token::RightBracket,
            ('+', _) => Token::Plus,
            ('-', _) => Token::Minus,
            ('/', _) => Token::Slash,
            ('%', _) => Token::Percent,
            (other, _) => return Err(QueryError::at(at, format!("unexpected character '{other}'"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<Token> {
        tokenize(text).unwrap().into_iter().map(|t| t.token).collect()
    }

    #[test]
    fn numbers_strings_and_operators() {
        assert_eq!(
            tokens("a<>0x1F 'it\\'s' \"\\u0041\" 2.5e2 <= !="),
            vec![
                Token::Word("a".into()),
                Token::NotEqual,
                Token::Number(31.0),
                Token::Str("it's".into()),
                Token::Str("A".into()),
                Token::Number(250.0),
                Token::LessEqual,
                Token::NotEqual,
                Token::End
            ]
        );
    }

    #[test]
    fn positions_count_lines_and_columns() {
        let spanned = tokenize("SELECT *\n  FROM devices").unwrap();
        assert_eq!(spanned[2].at, Position { line: 2, column: 3 });
    }

    #[test]
    fn unclosed_string_is_an_error_where_it_starts() {
        let error = tokenize("SELECT * WHERE a = 'x").unwrap_err();
        assert_eq!(error.to_string(), "line 1, column 20: this string is not closed");
    }
}
