//! `COUNT() SUM AVG MIN MAX`, over all matching twins or per `GROUP BY` value.

use crate::ast::{Aggregate, Projection, SelectItem};
use crate::document::FieldPath;
use crate::eval::evaluate;
use crate::plan::IndexKey;
use crate::value::{number_json, QValue};
use std::cmp::Ordering;
use std::collections::HashMap;

#[derive(PartialEq, Eq, Hash)]
enum GroupKey {
    Primitive(IndexKey),
    /// Objects and arrays by their JSON text; `None` for undefined.
    Other(Option<String>),
}
use twinhub_core::DeviceRecord;

/// The running state of one aggregate.
#[derive(Clone, Debug)]
enum Accumulator {
    Count(u64),
    Sum(f64),
    Avg { sum: f64, count: u64 },
    Min(Option<QValue<'static>>),
    Max(Option<QValue<'static>>),
}

impl Accumulator {
    fn new(aggregate: &Aggregate) -> Accumulator {
        match aggregate {
            Aggregate::Count => Accumulator::Count(0),
            Aggregate::Sum(_) => Accumulator::Sum(0.0),
            Aggregate::Avg(_) => Accumulator::Avg { sum: 0.0, count: 0 },
            Aggregate::Min(_) => Accumulator::Min(None),
            Aggregate::Max(_) => Accumulator::Max(None),
        }
    }

    fn add(&mut self, aggregate: &Aggregate, record: &DeviceRecord) {
        let argument = match aggregate {
            Aggregate::Count => None,
            Aggregate::Sum(e) | Aggregate::Avg(e) | Aggregate::Min(e) | Aggregate::Max(e) => Some(evaluate(e, record)),
        };
        match (self, argument) {
            (Accumulator::Count(n), _) => *n += 1,
            (Accumulator::Sum(sum), Some(QValue::Number(x))) => *sum += x,
            (Accumulator::Avg { sum, count }, Some(QValue::Number(x))) => {
                *sum += x;
                *count += 1;
            }
            (Accumulator::Min(best), Some(value)) => keep(best, value, Ordering::Less),
            (Accumulator::Max(best), Some(value)) => keep(best, value, Ordering::Greater),
            _ => {}
        }
    }

    fn result(&self) -> Option<serde_json::Value> {
        match self {
            Accumulator::Count(n) => Some((*n).into()),
            Accumulator::Sum(sum) => Some(number_json(*sum)),
            Accumulator::Avg { count: 0, .. } => None,
            Accumulator::Avg { sum, count } => Some(number_json(sum / *count as f64)),
            Accumulator::Min(best) | Accumulator::Max(best) => best.as_ref().and_then(QValue::to_json),
        }
    }
}

/// MIN and MAX consider numbers and strings; numbers win over strings when both occur (numbers first).
fn keep(best: &mut Option<QValue<'static>>, value: QValue, wanted: Ordering) {
    if !matches!(value, QValue::Number(_) | QValue::Str(_)) {
        return;
    }
    let replace = match best {
        None => true,
        Some(current) => match current.order(&value) {
            Some(order) => order == wanted.reverse(),
            None => matches!(value, QValue::Number(_)),
        },
    };
    if replace {
        *best = Some(value.into_owned());
    }
}

/// Output column names: the alias, else the property's last segment, else `$1`, `$2`, ... by position.
pub fn column_names(items: &[SelectItem]) -> Vec<String> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match (&item.alias, &item.value) {
            (Some(alias), _) => alias.clone(),
            (None, Projection::Expr(crate::ast::Expr::Path(path))) => path.output_name(),
            (None, _) => format!("${}", index + 1),
        })
        .collect()
}

/// One row per group (or one row without GROUP BY), groups in order of first appearance.
pub fn aggregate<'a>(
    items: &[SelectItem],
    group_by: Option<&FieldPath>,
    records: impl Iterator<Item = &'a DeviceRecord>,
) -> Vec<serde_json::Value> {
    let names = column_names(items);
    let fresh = || -> Vec<Option<Accumulator>> {
        items
            .iter()
            .map(|item| match &item.value {
                Projection::Aggregate(aggregate) => Some(Accumulator::new(aggregate)),
                Projection::Expr(_) => None,
            })
            .collect()
    };
    // Groups in first-seen order. Primitive group values are keyed without rendering them; objects and
    // arrays by their JSON text; undefined is a group of its own.
    let mut groups: Vec<(Option<serde_json::Value>, Vec<Option<Accumulator>>)> = Vec::new();
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    if group_by.is_none() {
        groups.push((None, fresh()));
    }
    for record in records {
        let slot = match group_by {
            None => 0,
            Some(path) => {
                let value = path.resolve(record);
                let key = match IndexKey::of_value(&value) {
                    Some(key) => GroupKey::Primitive(key),
                    None => GroupKey::Other(value.to_json().map(|json| json.to_string())),
                };
                *index.entry(key).or_insert_with(|| {
                    groups.push((value.to_json(), fresh()));
                    groups.len() - 1
                })
            }
        };
        for (item, accumulator) in items.iter().zip(groups[slot].1.iter_mut()) {
            if let (Projection::Aggregate(aggregate), Some(accumulator)) = (&item.value, accumulator) {
                accumulator.add(aggregate, record);
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, accumulators)| {
            let mut row = serde_json::Map::new();
            for (name, accumulator) in names.iter().zip(accumulators) {
                let value = match accumulator {
                    Some(accumulator) => accumulator.result(),
                    None => key.clone(),
                };
                if let Some(value) = value {
                    row.insert(name.clone(), value);
                }
            }
            serde_json::Value::Object(row)
        })
        .collect()
}
