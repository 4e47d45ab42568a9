//! What a query lets the hub skip: constraints on a property that every match must satisfy (top-level
//! `AND` conjuncts): equality and `IN`, ranges (`< <= > >=`) and `STARTSWITH`. An in-memory index or a
//! store can serve them without a scan; the full condition is still checked on every candidate, so a
//! plan never changes a result.

use crate::ast::{BinaryOp, Constant, Expr};
use crate::document::FieldPath;
use crate::functions::Function;
use std::ops::Bound;

#[derive(Clone, Debug, PartialEq)]
pub enum Requirement {
    /// Equal to one of these keys.
    OneOf(Vec<IndexKey>),
    /// Within these bounds (both of the same type: comparisons never cross types).
    Range {
        lower: Bound<IndexKey>,
        upper: Bound<IndexKey>,
    },
    /// A string starting with this prefix.
    Prefix(String),
}

/// `path` must satisfy `requirement` for a twin to match.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint<'q> {
    pub path: &'q FieldPath,
    pub requirement: Requirement,
}

impl Constraint<'_> {
    /// Rough selectivity rank: equalities on few values first, then prefixes, then ranges.
    fn rank(&self) -> usize {
        match &self.requirement {
            Requirement::OneOf(keys) => keys.len(),
            Requirement::Prefix(_) => 1_000,
            Requirement::Range { .. } => 2_000,
        }
    }
}

/// Constraints implied by the condition, most selective first.
pub fn constraints(condition: Option<&Expr>) -> Vec<Constraint<'_>> {
    let mut found = Vec::new();
    if let Some(condition) = condition {
        collect(condition, &mut found);
    }
    found.sort_by_key(Constraint::rank);
    found
}

fn collect<'q>(expr: &'q Expr, found: &mut Vec<Constraint<'q>>) {
    match expr {
        Expr::Binary(BinaryOp::And, left, right) => {
            collect(left, found);
            collect(right, found);
        }
        Expr::Binary(op, left, right) => {
            let (path, value, op) = match (&**left, &**right) {
                (Expr::Path(path), Expr::Constant(value)) => (path, value, *op),
                (Expr::Constant(value), Expr::Path(path)) => (path, value, mirrored(*op)),
                _ => return,
            };
            let Some(key) = IndexKey::of_constant(value) else {
                return;
            };
            let (low, high) = key.type_bounds();
            let requirement = match op {
                BinaryOp::Equal => Requirement::OneOf(vec![key]),
                BinaryOp::Greater => Requirement::Range {
                    lower: Bound::Excluded(key),
                    upper: high,
                },
                BinaryOp::GreaterEqual => Requirement::Range {
                    lower: Bound::Included(key),
                    upper: high,
                },
                BinaryOp::Less => Requirement::Range {
                    lower: low,
                    upper: Bound::Excluded(key),
                },
                BinaryOp::LessEqual => Requirement::Range {
                    lower: low,
                    upper: Bound::Included(key),
                },
                _ => return,
            };
            found.push(Constraint { path, requirement });
        }
        Expr::In {
            value,
            list,
            negated: false,
        } => {
            if let (Expr::Path(path), Expr::Constant(Constant::Array(items))) = (&**value, &**list) {
                let keys: Option<Vec<IndexKey>> = items.iter().map(IndexKey::of_constant).collect();
                if let Some(keys) = keys {
                    found.push(Constraint {
                        path,
                        requirement: Requirement::OneOf(keys),
                    });
                }
            }
        }
        Expr::Call(Function::StartsWith, args) => {
            if let [Expr::Path(path), Expr::Constant(Constant::Str(prefix))] = args.as_slice() {
                found.push(Constraint {
                    path,
                    requirement: Requirement::Prefix(prefix.clone()),
                });
            }
        }
        _ => {}
    }
}

/// `c < path` is `path > c`.
fn mirrored(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Less => BinaryOp::Greater,
        BinaryOp::LessEqual => BinaryOp::GreaterEqual,
        BinaryOp::Greater => BinaryOp::Less,
        BinaryOp::GreaterEqual => BinaryOp::LessEqual,
        other => other,
    }
}

/// A primitive value as an index key. Equal keys exactly when `=` says the values are equal (numbers
/// by value, so `3` and `3.0` share a key), and ordered within a type as `<` orders them; types are
/// ordered null < booleans < numbers < strings, and ranges never cross types.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKey {
    Null,
    Bool(bool),
    /// The f64 bits, transformed so that integer order is numeric order.
    Number(u64),
    Str(Box<str>),
}

impl IndexKey {
    pub fn of_value(value: &crate::value::QValue) -> Option<IndexKey> {
        use crate::value::QValue;
        Some(match value {
            QValue::Null => IndexKey::Null,
            QValue::Bool(b) => IndexKey::Bool(*b),
            QValue::Number(n) => IndexKey::number(*n)?,
            QValue::Str(s) => IndexKey::Str(s.as_ref().into()),
            _ => return None,
        })
    }

    pub fn of_constant(constant: &Constant) -> Option<IndexKey> {
        Some(match constant {
            Constant::Null => IndexKey::Null,
            Constant::Bool(b) => IndexKey::Bool(*b),
            Constant::Number(n) => IndexKey::number(*n)?,
            Constant::Str(s) => IndexKey::Str(s.as_str().into()),
            _ => return None,
        })
    }

    fn number(n: f64) -> Option<IndexKey> {
        if n.is_nan() {
            return None;
        }
        // -0.0 = 0.0 in comparisons, so they share a key.
        let bits = if n == 0.0 { 0.0f64.to_bits() } else { n.to_bits() };
        let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
        Some(IndexKey::Number(ordered))
    }

    /// The bounds that hold every key of this key's type and no other.
    fn type_bounds(&self) -> (Bound<IndexKey>, Bound<IndexKey>) {
        match self {
            IndexKey::Null => (Bound::Included(IndexKey::Null), Bound::Included(IndexKey::Null)),
            IndexKey::Bool(_) => (
                Bound::Included(IndexKey::Bool(false)),
                Bound::Included(IndexKey::Bool(true)),
            ),
            IndexKey::Number(_) => (
                Bound::Excluded(IndexKey::Bool(true)),
                Bound::Excluded(IndexKey::Str("".into())),
            ),
            IndexKey::Str(_) => (Bound::Included(IndexKey::Str("".into())), Bound::Unbounded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_keys_order_like_numbers() {
        let keys: Vec<IndexKey> = [-5.5, -1.0, -0.0, 0.0, 0.25, 3.0, 1e9]
            .iter()
            .filter_map(|n| IndexKey::number(*n))
            .collect();
        assert!(keys.windows(2).all(|pair| pair[0] <= pair[1]), "{keys:?}");
        assert_eq!(keys[2], keys[3]);
        assert!(IndexKey::Bool(true) < keys[0] && keys[6] < IndexKey::Str("".into()));
    }
}
