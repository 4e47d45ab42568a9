//! What a query lets the hub skip: equality and `IN` constraints on a property that every match must
//! satisfy (top-level `AND` conjuncts). A store or an in-memory index can serve them without a scan;
//! the full condition is still checked on every candidate, so a plan never changes a result.

use crate::ast::{BinaryOp, Constant, Expr};
use crate::document::FieldPath;

/// `path` must equal one of `values` for a twin to match.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint<'q> {
    pub path: &'q FieldPath,
    pub values: Vec<&'q Constant>,
}

/// Constraints implied by the condition, most selective first (fewest values).
pub fn constraints(condition: Option<&Expr>) -> Vec<Constraint<'_>> {
    let mut found = Vec::new();
    if let Some(condition) = condition {
        collect(condition, &mut found);
    }
    found.sort_by_key(|c| c.values.len());
    found
}

fn collect<'q>(expr: &'q Expr, found: &mut Vec<Constraint<'q>>) {
    match expr {
        Expr::Binary(BinaryOp::And, left, right) => {
            collect(left, found);
            collect(right, found);
        }
        Expr::Binary(BinaryOp::Equal, left, right) => match (&**left, &**right) {
            (Expr::Path(path), Expr::Constant(value)) | (Expr::Constant(value), Expr::Path(path))
                if is_primitive(value) =>
            {
                found.push(Constraint {
                    path,
                    values: vec![value],
                })
            }
            _ => {}
        },
        Expr::In {
            value,
            list,
            negated: false,
        } => {
            if let (Expr::Path(path), Expr::Constant(Constant::Array(items))) = (&**value, &**list) {
                if items.iter().all(is_primitive) {
                    found.push(Constraint {
                        path,
                        values: items.iter().collect(),
                    });
                }
            }
        }
        _ => {}
    }
}

fn is_primitive(constant: &Constant) -> bool {
    matches!(
        constant,
        Constant::Null | Constant::Bool(_) | Constant::Number(_) | Constant::Str(_)
    )
}

/// A primitive value as an index key: equal keys exactly when `=` says the values are equal
/// (numbers by value, so `3` and `3.0` share a key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IndexKey {
    Null,
    Bool(bool),
    Number(u64),
    Str(Box<str>),
}

impl IndexKey {
    pub fn of_value(value: &crate::value::QValue) -> Option<IndexKey> {
        use crate::value::QValue;
        Some(match value {
            QValue::Null => IndexKey::Null,
            QValue::Bool(b) => IndexKey::Bool(*b),
            QValue::Number(n) => IndexKey::number(*n),
            QValue::Str(s) => IndexKey::Str(s.as_ref().into()),
            _ => return None,
        })
    }

    pub fn of_constant(constant: &Constant) -> Option<IndexKey> {
        Some(match constant {
            Constant::Null => IndexKey::Null,
            Constant::Bool(b) => IndexKey::Bool(*b),
            Constant::Number(n) => IndexKey::number(*n),
            Constant::Str(s) => IndexKey::Str(s.as_str().into()),
            _ => return None,
        })
    }

    fn number(n: f64) -> IndexKey {
        // -0.0 = 0.0 in comparisons, so they share a key.
        IndexKey::Number(if n == 0.0 { 0 } else { n.to_bits() })
    }
}
