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
use twinhub_core::DeviceRecord;

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
        match self.query.select {
            Select::All => ItemType::Twin,
            Select::Items(_) => ItemType::Raw,
        }
    }

    /// Aggregates (or GROUP BY) produce rows over all matches rather than one row per twin.
    pub fn is_aggregate(&self) -> bool {
        self.query.group_by.is_some()
            || matches!(&self.query.select, Select::Items(items)
                if items.iter().any(|i| matches!(i.value, Projection::Aggregate(_))))
    }

    pub fn matches(&self, record: &DeviceRecord) -> bool {
        self.query
            .condition
            .as_ref()
            .is_none_or(|condition| eval::passes(condition, record))
    }

    /// The row a matching twin contributes to a non-aggregate query, as JSON text.
    pub fn row(&self, record: &DeviceRecord) -> std::sync::Arc<str> {
        match &self.query.select {
            Select::All => twinhub_core::json::twin_json_text(record),
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
