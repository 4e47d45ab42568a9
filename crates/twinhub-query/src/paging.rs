//! Running a query one page at a time. Twins are visited in device-id order and the continuation token
//! records the last id returned, so each matching twin appears exactly once across the pages of a query,
//! whatever is written between pages, and no state is kept on the server (any hub node can serve the
//! next page). Aggregate rows are recomputed per page and paged by position.

use crate::plan::{self, Constraint};
use crate::{aggregate, CompiledQuery, QueryError, QueryRow};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use twinhub_core::DeviceRecord;

/// Items per page when the client asks for none (`x-ms-max-item-count` absent).
pub const PAGE_SIZE_DEFAULT: usize = 1000;
/// Most items per page, whatever the client asks for.
pub const PAGE_SIZE_MAX: usize = 10_000;

/// `x-ms-item-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemType {
    Twin,
    /// A row of `devices.jobs`.
    DeviceJob,
    Raw,
}

impl ItemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Twin => "twin",
            ItemType::DeviceJob => "deviceJob",
            ItemType::Raw => "raw",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Page {
    /// Each item as JSON text: a twin's text is rendered once per record version and shared (see
    /// `twinhub_core::record::RenderedTwin`), so a page of twins is built without serialising anything.
    pub items: Vec<Arc<str>>,
    /// Present only when more results exist (the Node SDK loops while the header is there).
    pub continuation: Option<String>,
    pub item_type: ItemType,
}

impl Page {
    /// The items parsed, for callers that inspect them (tests, tools).
    pub fn values(&self) -> Vec<serde_json::Value> {
        self.items
            .iter()
            .map(|item| serde_json::from_str(item).unwrap_or(serde_json::Value::Null))
            .collect()
    }

    /// The items as one JSON array, the body of a query response.
    pub fn to_json_array(&self) -> String {
        let mut body = String::with_capacity(2 + self.items.iter().map(|item| item.len() + 1).sum::<usize>());
        body.push('[');
        for (n, item) in self.items.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(item);
        }
        body.push(']');
        body
    }
}

/// A row or aggregate result as an item.
pub(crate) fn json_text(value: &serde_json::Value) -> Arc<str> {
    value.to_string().into()
}

/// A consistent view of the registry in device-id order (the hub's snapshot).
pub trait OrderedTwins<R: QueryRow = DeviceRecord> {
    /// The twins whose cursor key sorts strictly after `after` (all when `None`), in that order.
    fn after<'a>(&'a self, after: Option<&str>) -> Box<dyn Iterator<Item = &'a R> + 'a>;

    /// A superset of the twins satisfying `constraint` (ids after `after`, in id order), when an index
    /// can answer it without a scan; `None` otherwise. The caller still checks the whole condition.
    fn candidates<'a>(
        &'a self,
        _constraint: &Constraint<'_>,
        _after: Option<&str>,
    ) -> Option<Box<dyn Iterator<Item = &'a R> + 'a>> {
        None
    }
}

/// The twins a query must look at: through the first constraint an index serves, else all of them.
fn source<'a, R: QueryRow>(
    query: &CompiledQuery,
    twins: &'a dyn OrderedTwins<R>,
    after: Option<&str>,
) -> Box<dyn Iterator<Item = &'a R> + 'a> {
    plan::constraints(query.query.condition.as_ref())
        .iter()
        .find_map(|constraint| twins.candidates(constraint, after))
        .unwrap_or_else(|| twins.after(after))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    /// Fingerprint of the query text.
    q: u64,
    /// Last device id returned (twin and projection queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    /// Items returned so far (for TOP, and the position of aggregate rows).
    n: u64,
}

impl Cursor {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(token: &str, fingerprint: u64) -> Result<Cursor, QueryError> {
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| token.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or(QueryError::BadContinuation)?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| QueryError::BadContinuation)?;
        if cursor.q != fingerprint {
            return Err(QueryError::BadContinuation);
        }
        Ok(cursor)
    }
}

/// FNV-1a over the query text.
pub(crate) fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl CompiledQuery {
    /// One page of results. `page_size` is clamped to 1..=PAGE_SIZE_MAX.
    pub fn page<R: QueryRow>(
        &self,
        twins: &dyn OrderedTwins<R>,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page, QueryError> {
        let cursor = match continuation.filter(|token| !token.is_empty()) {
            Some(token) => Cursor::decode(token, self.fingerprint)?,
            None => Cursor {
                q: self.fingerprint,
                ..Cursor::default()
            },
        };
        let page_size = page_size.clamp(1, PAGE_SIZE_MAX) as u64;
        let remaining = self.query.top.map_or(u64::MAX, |top| top.saturating_sub(cursor.n));
        let take = page_size.min(remaining) as usize;
        let item_type = self.item_type();
        // A query reads the collection its rows make up.
        if self.query.from != R::COLLECTION || take == 0 {
            return Ok(Page {
                items: Vec::new(),
                continuation: None,
                item_type,
            });
        }
        if self.is_aggregate() {
            return Ok(self.aggregate_page(twins, cursor, take, remaining));
        }
        let mut matching = source(self, twins, cursor.after.as_deref()).filter(|record| self.matches(*record));
        let mut items = Vec::with_capacity(take.min(1024));
        let mut last_id = None;
        for record in matching.by_ref().take(take) {
            items.push(self.row(record));
            last_id = Some(record.cursor_key().into_owned());
        }
        let returned = cursor.n + items.len() as u64;
        let more = items.len() == take && (take as u64) < remaining;
        let continuation = (more && matching.next().is_some()).then(|| {
            Cursor {
                q: self.fingerprint,
                after: last_id,
                n: returned,
            }
            .encode()
        });
        Ok(Page {
            items,
            continuation,
            item_type,
        })
    }

    fn aggregate_page<R: QueryRow>(
        &self,
        twins: &dyn OrderedTwins<R>,
        cursor: Cursor,
        take: usize,
        remaining: u64,
    ) -> Page {
        let items = match &self.query.select {
            crate::ast::Select::Items(items) => items,
            crate::ast::Select::All => {
                return Page {
                    items: Vec::new(),
                    continuation: None,
                    item_type: ItemType::Raw,
                }
            }
        };
        let records: Vec<&R> = source(self, twins, None).collect();
        let rows = aggregate::aggregate(items, self.query.group_by.as_ref(), &records, &|record| {
            self.matches(record)
        });
        let start = (cursor.n as usize).min(rows.len());
        let end = start.saturating_add(take).min(rows.len());
        let page: Vec<_> = rows[start..end].to_vec();
        let more = end < rows.len() && (page.len() as u64) < remaining;
        let continuation = more.then(|| {
            Cursor {
                q: self.fingerprint,
                after: None,
                n: end as u64,
            }
            .encode()
        });
        Page {
            items: page.iter().map(json_text).collect(),
            continuation,
            item_type: ItemType::Raw,
        }
    }
}
