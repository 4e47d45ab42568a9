//! Recursive-descent parser from tokens to the `Query` AST, with IoT Hub's precedence:
//! OR < AND < NOT < comparison/IN < + - < * / % < unary minus.

use crate::ast::{Aggregate, BinaryOp, Collection, Constant, Expr, Projection, Query, Select, SelectItem};
use crate::document::FieldPath;
use crate::error::{Position, QueryError};
use crate::functions::Function;
use crate::lexer::{tokenize, Spanned, Token};

/// Longest query IoT Hub accepts.
pub const QUERY_LENGTH_MAX: usize = 8192;

/// Words that cannot start a property path (after a dot they are ordinary names: `tags.group` works).
const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "GROUP", "BY", "AND", "OR", "NOT", "IN", "NIN", "AS", "TOP",
];

const AGGREGATES: &[&str] = &["COUNT", "SUM", "AVG", "MIN", "MAX"];

pub fn parse(text: &str) -> Result<Query, QueryError> {
    check_length(text)?;
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        index: 0,
        array_indexes: false,
    };
    let query = parser.query()?;
    validate(&query)?;
    Ok(query)
}

/// A condition on its own, as message routing writes them (`$body.readings[0] > 30 AND level = 'high'`):
/// the query language's expressions, where a path may also index an array (`[n]`, a part named `n`).
pub fn parse_condition(text: &str) -> Result<Expr, QueryError> {
    check_length(text)?;
    let mut parser = Parser {
        tokens: tokenize(text)?,
        index: 0,
        array_indexes: true,
    };
    let condition = parser.expression()?;
    if *parser.peek() != Token::End {
        return Err(parser.error_here("AND, OR or the end of the condition"));
    }
    Ok(condition)
}

fn check_length(text: &str) -> Result<(), QueryError> {
    let length = text.chars().count();
    if length > QUERY_LENGTH_MAX {
        return Err(QueryError::TooLong {
            length,
            max: QUERY_LENGTH_MAX,
        });
    }
    Ok(())
}

struct Parser {
    tokens: Vec<Spanned>,
    index: usize,
    /// Paths may index arrays (routing conditions; twin queries have no such syntax).
    array_indexes: bool,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.current().token
    }

    fn current(&self) -> &Spanned {
        // The token list always ends with `End`, and the parser never moves past it.
        &self.tokens[self.index.min(self.tokens.len() - 1)]
    }

    fn peek_next(&self) -> &Token {
        &self.tokens[(self.index + 1).min(self.tokens.len() - 1)].token
    }

    fn at(&self) -> Position {
        self.current().at
    }

    fn advance(&mut self) -> Token {
        let token = self.current().token.clone();
        if self.index < self.tokens.len() - 1 {
            self.index += 1;
        }
        token
    }

    fn previous(&self) -> String {
        match self.index.checked_sub(1).map(|i| &self.tokens[i].token) {
            Some(Token::Word(word)) => word.to_uppercase(),
            Some(other) => other.describe(),
            None => "the start".into(),
        }
    }

    fn error_here(&self, expected: &str) -> QueryError {
        QueryError::at(
            self.at(),
            format!(
                "expected {expected} after {}, found {}",
                self.previous(),
                self.peek().describe()
            ),
        )
    }

    fn accept_keyword(&mut self, keyword: &str) -> bool {
        if self.peek().is_keyword(keyword) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), QueryError> {
        if self.accept_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error_here(keyword))
        }
    }

    fn accept(&mut self, token: &Token) -> bool {
        if self.peek() == token {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: Token) -> Result<(), QueryError> {
        if self.accept(&token) {
            Ok(())
        } else {
            Err(self.error_here(&token.describe()))
        }
    }

    fn query(&mut self) -> Result<Query, QueryError> {
        self.expect_keyword("SELECT")?;
        let top = if self.accept_keyword("TOP") {
            match self.advance() {
                Token::Number(n) if n >= 0.0 && n.fract() == 0.0 => Some(n as u64),
                _ => {
                    self.index -= 1;
                    return Err(self.error_here("a whole number"));
                }
            }
        } else {
            None
        };
        let select = self.select_list()?;
        self.expect_keyword("FROM")?;
        let from = self.collection()?;
        let condition = if self.accept_keyword("WHERE") {
            Some(self.expression()?)
        } else {
            None
        };
        let group_by = if self.accept_keyword("GROUP") {
            self.expect_keyword("BY")?;
            Some(self.path_only()?)
        } else {
            None
        };
        if self.peek().is_keyword("ORDER") {
            return Err(QueryError::at(
                self.at(),
                "ORDER BY is not supported by the IoT Hub query language",
            ));
        }
        if *self.peek() != Token::End {
            return Err(QueryError::at(
                self.at(),
                format!("unexpected {} after the query", self.peek().describe()),
            ));
        }
        Ok(Query {
            top,
            select,
            from,
            condition,
            group_by,
        })
    }

    fn select_list(&mut self) -> Result<Select, QueryError> {
        if self.accept(&Token::Star) {
            return Ok(Select::All);
        }
        let mut items = vec![self.select_item()?];
        while self.accept(&Token::Comma) {
            items.push(self.select_item()?);
        }
        Ok(Select::Items(items))
    }

    fn select_item(&mut self) -> Result<SelectItem, QueryError> {
        let value = match self.peek().clone() {
            Token::Word(word)
                if AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(&word))
                    && *self.peek_next() == Token::LeftParen =>
            {
                self.advance();
                self.advance();
                let aggregate = if word.eq_ignore_ascii_case("COUNT") {
                    Aggregate::Count
                } else {
                    let argument = self.expression()?;
                    match word.to_ascii_uppercase().as_str() {
                        "SUM" => Aggregate::Sum(argument),
                        "AVG" => Aggregate::Avg(argument),
                        "MIN" => Aggregate::Min(argument),
                        _ => Aggregate::Max(argument),
                    }
                };
                self.expect(Token::RightParen)?;
                Projection::Aggregate(aggregate)
            }
            Token::Word(word) if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&word)) => {
                return Err(self.error_here("a property or an aggregate"));
            }
            _ => Projection::Expr(self.expression()?),
        };
        let alias = if self.accept_keyword("AS") {
            match self.advance() {
                Token::Word(alias) => Some(alias),
                _ => {
                    self.index -= 1;
                    return Err(self.error_here("a name"));
                }
            }
        } else {
            None
        };
        Ok(SelectItem { value, alias })
    }

    fn collection(&mut self) -> Result<Collection, QueryError> {
        let at = self.at();
        if !self.accept_keyword("devices") {
            return Err(QueryError::at(
                at,
                format!("expected 'devices' after FROM, found {}", self.peek().describe()),
            ));
        }
        if !self.accept(&Token::Dot) {
            return Ok(Collection::Devices);
        }
        let at = self.at();
        if self.accept_keyword("modules") {
            Ok(Collection::DeviceModules)
        } else if self.accept_keyword("jobs") {
            Ok(Collection::DeviceJobs)
        } else {
            Err(QueryError::at(at, "expected 'modules' or 'jobs' after 'devices.'"))
        }
    }

    fn path_only(&mut self) -> Result<FieldPath, QueryError> {
        match self.peek().clone() {
            Token::Word(word) if !is_reserved(&word) => {
                self.advance();
                self.path(word)
            }
            _ => Err(self.error_here("a property path")),
        }
    }

    /// The rest of a dotted path whose first word was just read. After a dot every word is a name.
    fn path(&mut self, first: String) -> Result<FieldPath, QueryError> {
        let mut parts = vec![first];
        loop {
            if self.array_indexes && self.accept(&Token::LeftBracket) {
                match self.advance() {
                    Token::Number(n) if n.fract() == 0.0 && n >= 0.0 => parts.push(format!("{n}")),
                    _ => {
                        self.index -= 1;
                        return Err(self.error_here("an array index"));
                    }
                }
                self.expect(Token::RightBracket)?;
                continue;
            }
            if !self.accept(&Token::Dot) {
                break;
            }
            match self.advance() {
                Token::Word(word) => parts.push(word),
                Token::Number(n) if n.fract() == 0.0 && n >= 0.0 => parts.push(format!("{n}")),
                _ => {
                    self.index -= 1;
                    return Err(self.error_here("a property name"));
                }
            }
        }
        Ok(FieldPath::new(parts))
    }

    pub fn expression(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.accept_keyword("OR") {
            let right = self.and()?;
            left = Expr::Binary(BinaryOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not()?;
        while self.accept_keyword("AND") {
            let right = self.not()?;
            left = Expr::Binary(BinaryOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.accept_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.additive()?;
        let op = match self.peek() {
            Token::Equal => BinaryOp::Equal,
            Token::NotEqual => BinaryOp::NotEqual,
            Token::Less => BinaryOp::Less,
            Token::LessEqual => BinaryOp::LessEqual,
            Token::Greater => BinaryOp::Greater,
            Token::GreaterEqual => BinaryOp::GreaterEqual,
            token if token.is_keyword("IN") || token.is_keyword("NIN") => {
                let negated = token.is_keyword("NIN");
                self.advance();
                let list = self.additive()?;
                return Ok(Expr::In {
                    value: Box::new(left),
                    list: Box::new(list),
                    negated,
                });
            }
            token if token.is_keyword("NOT") && self.peek_next().is_keyword("IN") => {
                self.advance();
                self.advance();
                let list = self.additive()?;
                return Ok(Expr::In {
                    value: Box::new(left),
                    list: Box::new(list),
                    negated: true,
                });
            }
            _ => return Ok(left),
        };
        self.advance();
        let right = self.additive()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Token::Plus => BinaryOp::Add,
                Token::Minus => BinaryOp::Subtract,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.multiplicative()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Token::Star => BinaryOp::Multiply,
                Token::Slash => BinaryOp::Divide,
                Token::Percent => BinaryOp::Remainder,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.accept(&Token::Minus) {
            return Ok(match self.unary()? {
                Expr::Constant(Constant::Number(n)) => Expr::Constant(Constant::Number(-n)),
                other => Expr::Negate(Box::new(other)),
            });
        }
        if self.accept(&Token::Plus) {
            return self.unary();
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let at = self.at();
        match self.peek().clone() {
            Token::Number(n) => {
                self.advance();
                Ok(Expr::Constant(Constant::Number(n)))
            }
            Token::Str(s) => {
                self.advance();
                Ok(Expr::Constant(Constant::Str(s)))
            }
            Token::LeftParen => {
                self.advance();
                let inner = self.expression()?;
                self.expect(Token::RightParen)?;
                Ok(inner)
            }
            Token::LeftBracket => {
                self.advance();
                Ok(Expr::Constant(Constant::Array(self.array_items()?)))
            }
            Token::Word(word) if *self.peek_next() == Token::LeftParen => {
                self.advance();
                self.advance();
                self.call(word, at)
            }
            Token::Word(word) if !is_reserved(&word) => {
                self.advance();
                if *self.peek() != Token::Dot {
                    let constant = match word.to_ascii_lowercase().as_str() {
                        "true" => Some(Constant::Bool(true)),
                        "false" => Some(Constant::Bool(false)),
                        "null" => Some(Constant::Null),
                        "undefined" => Some(Constant::Undefined),
                        _ => None,
                    };
                    if let Some(constant) = constant {
                        return Ok(Expr::Constant(constant));
                    }
                }
                Ok(Expr::Path(self.path(word)?))
            }
            _ => Err(self.error_here("an expression")),
        }
    }

    fn array_items(&mut self) -> Result<Vec<Constant>, QueryError> {
        let mut items = Vec::new();
        if self.accept(&Token::RightBracket) {
            return Ok(items);
        }
        loop {
            match self.unary()? {
                Expr::Constant(constant) => items.push(constant),
                _ => return Err(QueryError::at(self.at(), "array elements must be constants")),
            }
            if self.accept(&Token::RightBracket) {
                return Ok(items);
            }
            self.expect(Token::Comma)?;
        }
    }

    fn call(&mut self, name: String, at: Position) -> Result<Expr, QueryError> {
        let Some((function, least, most)) = Function::lookup(&name) else {
            let message = if AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
                format!(
                    "the aggregate {} is allowed only in the SELECT clause",
                    name.to_uppercase()
                )
            } else {
                format!("unknown function '{name}'")
            };
            return Err(QueryError::at(at, message));
        };
        let mut args = Vec::new();
        if !self.accept(&Token::RightParen) {
            loop {
                args.push(self.expression()?);
                if self.accept(&Token::RightParen) {
                    break;
                }
                self.expect(Token::Comma)?;
            }
        }
        if args.len() < least || args.len() > most {
            let wanted = if least == most {
                format!("{least}")
            } else {
                format!("{least} to {most}")
            };
            return Err(QueryError::at(
                at,
                format!(
                    "{} takes {wanted} argument(s), {} given",
                    name.to_uppercase(),
                    args.len()
                ),
            ));
        }
        Ok(Expr::Call(function, args))
    }
}

fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

/// Rules that span clauses: what may be selected next to an aggregate or with GROUP BY.
fn validate(query: &Query) -> Result<(), QueryError> {
    let items = match &query.select {
        Select::All => {
            if query.group_by.is_some() {
                return Err(QueryError::Unsupported("SELECT * cannot be used with GROUP BY".into()));
            }
            return Ok(());
        }
        Select::Items(items) => items,
    };
    if query.from == Collection::DeviceJobs {
        return Err(QueryError::Unsupported("devices.jobs supports only SELECT *".into()));
    }
    let aggregates = items
        .iter()
        .filter(|i| matches!(i.value, Projection::Aggregate(_)))
        .count();
    match &query.group_by {
        Some(group) => {
            for item in items {
                if let Projection::Expr(expr) = &item.value {
                    if *expr != Expr::Path(group.clone()) {
                        return Err(QueryError::Unsupported(format!(
                            "with GROUP BY {}, the SELECT clause may hold only that property and aggregates",
                            group.dotted()
                        )));
                    }
                }
            }
        }
        None if aggregates > 0 && aggregates < items.len() => {
            return Err(QueryError::Unsupported(
                "aggregates cannot be selected together with properties unless the query has GROUP BY".into(),
            ));
        }
        None => {}
    }
    Ok(())
}
