//! Evaluating expressions over one twin, with IoT Hub's three-valued logic: `undefined` propagates
//! through comparisons and arithmetic, and a condition passes only when it is exactly `true`.

use crate::ast::{BinaryOp, Constant, Expr};
use crate::document::FieldPath;
use crate::value::QValue;
use std::borrow::Cow;
use std::cmp::Ordering;
use twinhub_core::DeviceRecord;

pub fn constant(value: &Constant) -> QValue<'_> {
    match value {
        Constant::Undefined => QValue::Undefined,
        Constant::Null => QValue::Null,
        Constant::Bool(b) => QValue::Bool(*b),
        Constant::Number(n) => QValue::Number(*n),
        Constant::Str(s) => QValue::Str(Cow::Borrowed(s)),
        Constant::Array(items) => QValue::Array(items.iter().map(constant).collect()),
    }
}

/// What paths read: a twin (queries), or a message with its device's twin (routing conditions).
pub trait Resolve {
    fn resolve<'a>(&'a self, path: &'a FieldPath) -> QValue<'a>;
}

impl Resolve for DeviceRecord {
    fn resolve<'a>(&'a self, path: &'a FieldPath) -> QValue<'a> {
        path.resolve(self)
    }
}

/// True only when the condition evaluates to boolean `true`.
pub fn passes<R: Resolve + ?Sized>(condition: &Expr, record: &R) -> bool {
    matches!(evaluate(condition, record), QValue::Bool(true))
}

pub fn evaluate<'a, R: Resolve + ?Sized>(expr: &'a Expr, record: &'a R) -> QValue<'a> {
    match expr {
        Expr::Constant(c) => constant(c),
        Expr::Path(path) => record.resolve(path),
        Expr::Not(inner) => match evaluate(inner, record) {
            QValue::Bool(b) => QValue::Bool(!b),
            _ => QValue::Undefined,
        },
        Expr::Negate(inner) => match evaluate(inner, record) {
            QValue::Number(n) => QValue::Number(-n),
            _ => QValue::Undefined,
        },
        Expr::Binary(BinaryOp::And, left, right) => {
            let left = evaluate(left, record);
            if matches!(left, QValue::Bool(false)) {
                return QValue::Bool(false);
            }
            match (left, evaluate(right, record)) {
                (_, QValue::Bool(false)) => QValue::Bool(false),
                (QValue::Bool(true), QValue::Bool(true)) => QValue::Bool(true),
                _ => QValue::Undefined,
            }
        }
        Expr::Binary(BinaryOp::Or, left, right) => {
            let left = evaluate(left, record);
            if matches!(left, QValue::Bool(true)) {
                return QValue::Bool(true);
            }
            match (left, evaluate(right, record)) {
                (_, QValue::Bool(true)) => QValue::Bool(true),
                (QValue::Bool(false), QValue::Bool(false)) => QValue::Bool(false),
                _ => QValue::Undefined,
            }
        }
        Expr::Binary(op, left, right) => binary(*op, &evaluate(left, record), &evaluate(right, record)),
        Expr::In { value, list, negated } => {
            let value = evaluate(value, record);
            let QValue::Array(items) = evaluate(list, record) else {
                return QValue::Undefined;
            };
            if !value.is_primitive() {
                return QValue::Undefined;
            }
            let found = items.iter().any(|item| value.equals(item) == Some(true));
            QValue::Bool(found != *negated)
        }
        Expr::Call(function, args) => function.call(args.iter().map(|arg| evaluate(arg, record)).collect()),
    }
}

fn binary<'a>(op: BinaryOp, left: &QValue, right: &QValue) -> QValue<'a> {
    let ordered = |test: fn(Ordering) -> bool| left.order(right).map_or(QValue::Undefined, |o| QValue::Bool(test(o)));
    match op {
        BinaryOp::Equal => left.equals(right).map_or(QValue::Undefined, QValue::Bool),
        BinaryOp::NotEqual => left.equals(right).map_or(QValue::Undefined, |eq| QValue::Bool(!eq)),
        BinaryOp::Less => ordered(Ordering::is_lt),
        BinaryOp::LessEqual => ordered(Ordering::is_le),
        BinaryOp::Greater => ordered(Ordering::is_gt),
        BinaryOp::GreaterEqual => ordered(Ordering::is_ge),
        BinaryOp::Add | BinaryOp::Subtract | BinaryOp::Multiply | BinaryOp::Divide | BinaryOp::Remainder => {
            let (Some(a), Some(b)) = (left.as_number(), right.as_number()) else {
                return QValue::Undefined;
            };
            let result = match op {
                BinaryOp::Add => a + b,
                BinaryOp::Subtract => a - b,
                BinaryOp::Multiply => a * b,
                BinaryOp::Divide if b != 0.0 => a / b,
                BinaryOp::Remainder if b != 0.0 => a % b,
                _ => return QValue::Undefined,
            };
            if result.is_finite() {
                QValue::Number(result)
            } else {
                QValue::Undefined
            }
        }
        BinaryOp::And | BinaryOp::Or => QValue::Undefined,
    }
}
