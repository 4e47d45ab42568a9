//! `COUNT() SUM AVG MIN MAX`, over all matching twins or per `GROUP BY` value.

use crate::ast::{Aggregate, Projection, SelectItem};
use crate::document::FieldPath;
use crate::eval::{evaluate, Resolve};
use crate::plan::IndexKey;
use crate::value::{number_json, QValue};
use std::cmp::Ordering;
use std::collections::HashMap;

#[derive(Clone, PartialEq, Eq, Hash)]
enum GroupKey {
    Primitive(IndexKey),
    /// Objects and arrays by their JSON text; `None` for undefined.
    Other(Option<String>),
}

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

    fn add<R: Resolve + ?Sized>(&mut self, aggregate: &Aggregate, record: &R) {
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

    /// Folds in what another thread accumulated over other records.
    fn merge(&mut self, other: Accumulator) {
        match (self, other) {
            (Accumulator::Count(n), Accumulator::Count(m)) => *n += m,
            (Accumulator::Sum(sum), Accumulator::Sum(more)) => *sum += more,
            (Accumulator::Avg { sum, count }, Accumulator::Avg { sum: more, count: n }) => {
                *sum += more;
                *count += n;
            }
            (Accumulator::Min(best), Accumulator::Min(Some(value))) => keep(best, value, Ordering::Less),
            (Accumulator::Max(best), Accumulator::Max(Some(value))) => keep(best, value, Ordering::Greater),
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

/// Below this many twins an aggregate runs on the calling thread: spawning costs more than it saves.
const PARALLEL_MIN: usize = 50_000;

/// One row per group (or one row without GROUP BY), groups in order of first appearance, over the
/// `records` that `matches`. Large inputs are split over every core; the parts are merged in order, so
/// the groups' order is the same as on one thread.
pub fn aggregate<R: Resolve + Sync>(
    items: &[SelectItem],
    group_by: Option<&FieldPath>,
    records: &[&R],
    matches: &(dyn Fn(&R) -> bool + Sync),
) -> Vec<serde_json::Value> {
    let run = |part: &[&R]| {
        let mut groups = Groups::new(items, group_by);
        for record in part.iter().filter(|record| matches(record)) {
            groups.add(*record);
        }
        groups
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let groups = if records.len() < PARALLEL_MIN || threads == 1 {
        run(records)
    } else {
        let chunk = records.len().div_ceil(threads);
        let parts: Vec<Option<Groups>> = std::thread::scope(|scope| {
            let handles: Vec<_> = records
                .chunks(chunk)
                .map(|part| scope.spawn(move || run(part)))
                .collect();
            handles.into_iter().map(|handle| handle.join().ok()).collect()
        });
        let mut merged = Groups::new(items, group_by);
        for (part, records) in parts.into_iter().zip(records.chunks(chunk)) {
            // A part whose thread panicked is recomputed here rather than silently dropped.
            merged.merge(part.unwrap_or_else(|| run(records)));
        }
        merged
    };
    groups.rows(&column_names(items))
}

/// The groups seen so far, in first-seen order. Primitive group values are keyed without rendering
/// them; objects and arrays by their JSON text; undefined is a group of its own.
struct Groups<'q> {
    items: &'q [SelectItem],
    group_by: Option<&'q FieldPath>,
    list: Vec<Group>,
    index: HashMap<GroupKey, usize>,
}

struct Group {
    key: GroupKey,
    value: Option<serde_json::Value>,
    accumulators: Vec<Option<Accumulator>>,
}

impl<'q> Groups<'q> {
    fn new(items: &'q [SelectItem], group_by: Option<&'q FieldPath>) -> Groups<'q> {
        let mut groups = Groups {
            items,
            group_by,
            list: Vec::new(),
            index: HashMap::new(),
        };
        if group_by.is_none() {
            groups.slot(GroupKey::Other(None), || None);
        }
        groups
    }

    fn fresh(&self) -> Vec<Option<Accumulator>> {
        self.items
            .iter()
            .map(|item| match &item.value {
                Projection::Aggregate(aggregate) => Some(Accumulator::new(aggregate)),
                Projection::Expr(_) => None,
            })
            .collect()
    }

    fn slot(&mut self, key: GroupKey, value: impl FnOnce() -> Option<serde_json::Value>) -> usize {
        if let Some(&slot) = self.index.get(&key) {
            return slot;
        }
        let accumulators = self.fresh();
        self.list.push(Group {
            key: key.clone(),
            value: value(),
            accumulators,
        });
        self.index.insert(key, self.list.len() - 1);
        self.list.len() - 1
    }

    fn add<R: Resolve + ?Sized>(&mut self, record: &R) {
        let slot = match self.group_by {
            None => 0,
            Some(path) => {
                let value = record.resolve(path);
                let key = match IndexKey::of_value(&value) {
                    Some(key) => GroupKey::Primitive(key),
                    None => GroupKey::Other(value.to_json().map(|json| json.to_string())),
                };
                self.slot(key, || value.to_json())
            }
        };
        let items = self.items;
        for (item, accumulator) in items.iter().zip(self.list[slot].accumulators.iter_mut()) {
            if let (Projection::Aggregate(aggregate), Some(accumulator)) = (&item.value, accumulator) {
                accumulator.add(aggregate, record);
            }
        }
    }

    fn merge(&mut self, other: Groups) {
        for group in other.list {
            let value = group.value;
            let slot = self.slot(group.key, || value);
            for (mine, theirs) in self.list[slot].accumulators.iter_mut().zip(group.accumulators) {
                if let (Some(mine), Some(theirs)) = (mine, theirs) {
                    mine.merge(theirs);
                }
            }
        }
    }

    fn rows(self, names: &[String]) -> Vec<serde_json::Value> {
        self.list
            .into_iter()
            .map(|group| {
                let mut row = serde_json::Map::new();
                for (name, accumulator) in names.iter().zip(group.accumulators) {
                    let value = match accumulator {
                        Some(accumulator) => accumulator.result(),
                        None => group.value.clone(),
                    };
                    if let Some(value) = value {
                        row.insert(name.clone(), value);
                    }
                }
                serde_json::Value::Object(row)
            })
            .collect()
    }
}
