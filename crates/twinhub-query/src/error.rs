//! What is wrong with a query, and where.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("line {}, column {}: {message}", at.line, at.column)]
    Syntax { at: Position, message: String },
    #[error("the query is {length} characters long; at most {max} are allowed")]
    TooLong { length: usize, max: usize },
    #[error("{0}")]
    Unsupported(String),
    #[error("the continuation token is not valid for this query")]
    BadContinuation,
}

impl QueryError {
    pub fn at(at: Position, message: impl Into<String>) -> QueryError {
        QueryError::Syntax {
            at,
            message: message.into(),
        }
    }
}
