//! The IoT Hub query language over device twins: lexer, parser, evaluator and paging. No I/O: the hub
//! hands it a consistent, id-ordered view of the registry.
//!
//! Entry points: [`CompiledQuery::parse`], then [`CompiledQuery::page`] over an [`OrderedTwins`] view.

pub mod aggregate;
pub mod ast;
pub mod document;
pub mod error;
pub mod eval;
pub mod functions;
pub mod lexer;
pub mod paging;
pub mod parser;
pub mod plan;
pub mod routing;
pub mod value;

pub use error::{Position, QueryError};
pub use paging::{ItemType, OrderedTwins, Page, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
pub use parser::QUERY_LENGTH_MAX;

use ast::{Projection, Query, Select};
use eval::Resolve;
use twinhub_core::module::ModuleRecord;
use twinhub_core::DeviceRecord;

/// What a query's collection holds: device twins (`devices`) or module twins (`devices.modules`).
pub trait QueryRow: Resolve + Sync {
    /// The collection (`FROM`) such rows make up.
    const COLLECTION: ast::Collection;
    /// Where paging resumes after this row: its place in the collection's order.
    fn cursor_key(&self) -> std::borrow::Cow<'_, str>;
    /// The twin document `SELECT *` returns.
    fn twin_text(&self) -> std::sync::Arc<str>;
}

impl QueryRow for DeviceRecord {
    const COLLECTION: ast::Collection = ast::Collection::Devices;

    fn cursor_key(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self.identity.device_id.as_str())
    }

    fn twin_text(&self) -> std::sync::Arc<str> {
        twinhub_core::json::twin_json_text(self)
    }
}

/// A module twin reads as its device record's twin, with `moduleId` besides.
impl Resolve for ModuleRecord {
    fn resolve<'a>(&'a self, path: &'a document::FieldPath) -> value::QValue<'a> {
        let is_module_id = path.field == document::Field::Unknown
            && path.rest.is_empty()
            && path
                .written
                .first()
                .is_some_and(|root| root.eq_ignore_ascii_case("moduleId"));
        if is_module_id {
            return value::QValue::Str(std::borrow::Cow::Borrowed(self.module_id.as_str()));
        }
        path.resolve(&self.record)
    }
}

/// A row of `devices.jobs` reads as its document; its fields may be written `devices.jobs.<field>`, as
/// IoT Hub's documentation writes them, or bare.
impl Resolve for twinhub_core::job::DeviceJobRecord {
    fn resolve<'a>(&'a self, path: &'a document::FieldPath) -> value::QValue<'a> {
        let written = &path.written;
        let prefixed =
            written.len() > 2 && written[0].eq_ignore_ascii_case("devices") && written[1].eq_ignore_ascii_case("jobs");
        let members = if prefixed { &written[2..] } else { &written[..] };
        let document = self.to_json();
        let mut at = &document;
        for member in members {
            match at.get(member.as_str()) {
                Some(next) => at = next,
                None => return value::QValue::Undefined,
            }
        }
        value::QValue::from_json(at.clone())
    }
}

impl QueryRow for twinhub_core::job::DeviceJobRecord {
    const COLLECTION: ast::Collection = ast::Collection::DeviceJobs;

    /// `<job>/<device>`: the order a job's steps are kept in (no id has a `/`).
    fn cursor_key(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(format!("{}/{}", self.job_id, self.device_id))
    }

    fn twin_text(&self) -> std::sync::Arc<str> {
        std::sync::Arc::from(self.to_json().to_string())
    }
}

impl QueryRow for ModuleRecord {
    const COLLECTION: ast::Collection = ast::Collection::DeviceModules;

    /// `<device>/<module>`: the order modules are kept in (no id has a `/`).
    fn cursor_key(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(format!("{}/{}", self.device_id(), self.module_id))
    }

    fn twin_text(&self) -> std::sync::Arc<str> {
        std::sync::Arc::from(twinhub_core::module::module_twin_json(self).to_string())
    }
}

/// A parsed and checked query, ready to run any number of times.
#[derive(Clone, Debug)]
pub struct CompiledQuery {
    pub query: Query,
    /// Identifies the query text in continuation tokens, so a token is not reused with another query.
    fingerprint: u64,
}

impl CompiledQuery {
    pub fn parse(text: &str) -> Result<CompiledQuery, QueryError> {
        let query = parser::parse(text)?;
        Ok(CompiledQuery {
            query,
            fingerprint: paging::fingerprint(text.trim()),
        })
    }

    /// Full twins for `SELECT *`, raw rows otherwise.
    pub fn item_type(&self) -> ItemType {
        match (&self.query.select, self.query.from) {
            (Select::All, ast::Collection::DeviceJobs) => ItemType::DeviceJob,
            (Select::All, _) => ItemType::Twin,
            (Select::Items(_), _) => ItemType::Raw,
        }
    }

    /// Aggregates (or GROUP BY) produce rows over all matches rather than one row per twin.
    pub fn is_aggregate(&self) -> bool {
        self.query.group_by.is_some()
            || matches!(&self.query.select, Select::Items(items)
                if items.iter().any(|i| matches!(i.value, Projection::Aggregate(_))))
    }

    pub fn matches<R: Resolve + ?Sized>(&self, record: &R) -> bool {
        self.query
            .condition
            .as_ref()
            .is_none_or(|condition| eval::passes(condition, record))
    }

    /// The row a matching twin contributes to a non-aggregate query, as JSON text.
    pub fn row<R: QueryRow + ?Sized>(&self, record: &R) -> std::sync::Arc<str> {
        match &self.query.select {
            Select::All => record.twin_text(),
            Select::Items(items) => {
                let names = aggregate::column_names(items);
                let mut row = serde_json::Map::new();
                for (name, item) in names.into_iter().zip(items) {
                    if let Projection::Expr(expr) = &item.value {
                        if let Some(value) = eval::evaluate(expr, record).to_json() {
                            row.insert(name, value);
                        }
                    }
                }
                paging::json_text(&serde_json::Value::Object(row))
            }
        }
    }
}

#[cfg(test)]
mod tests;
