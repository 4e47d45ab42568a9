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
