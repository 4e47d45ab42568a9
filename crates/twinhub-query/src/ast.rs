//! The parsed query.

use crate::document::FieldPath;
use crate::functions::Function;

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub top: Option<u64>,
    pub select: Select,
    pub from: Collection,
    pub condition: Option<Expr>,
    pub group_by: Option<FieldPath>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    Devices,
    DeviceModules,
    DeviceJobs,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Select {
    All,
    Items(Vec<SelectItem>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SelectItem {
    pub value: Projection,
    pub alias: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Projection {
    Expr(Expr),
    Aggregate(Aggregate),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Aggregate {
    Count,
    Sum(Expr),
    Avg(Expr),
    Min(Expr),
    Max(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Constant {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    Array(Vec<Constant>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    Add,
    Subtract,
    Multiply,
    Divide,
    Remainder,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Constant(Constant),
    Path(FieldPath),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `x IN [..]` (`negated`: `NIN`).
    In {
        value: Box<Expr>,
        list: Box<Expr>,
        negated: bool,
    },
    Call(Function, Vec<Expr>),
}
