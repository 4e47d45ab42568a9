//! Queries over the registry snapshot. The snapshot a query reads is taken after every acknowledged
//! write has been swapped in, so a query sees every write acknowledged before it was sent
//! (read-your-writes), and it is ordered by device id, which is what the paging cursor relies on.

use crate::{Hub, HubError, Registry};
use std::ops::Bound;
use std::sync::Arc;
use twinhub_core::DeviceRecord;
use twinhub_query::{CompiledQuery, OrderedTwins, Page, PAGE_SIZE_DEFAULT};

struct RegistryView(Arc<Registry>);

impl OrderedTwins for RegistryView {
    fn after<'a>(&'a self, after: Option<&str>) -> Box<dyn Iterator<Item = &'a DeviceRecord> + 'a> {
        match after {
            None => Box::new(self.0.values().map(|record| &**record)),
            Some(id) => Box::new(
                self.0
                    .range::<_, str>((Bound::Excluded(id), Bound::Unbounded))
                    .map(|(_, record)| &**record),
            ),
        }
    }
}

impl Hub {
    /// One page of a query. CPU-bound over large registries: async callers run it on a blocking thread.
    pub fn query(&self, text: &str, page_size: Option<usize>, continuation: Option<&str>) -> Result<Page, HubError> {
        let query = CompiledQuery::parse(text)?;
        let view = RegistryView(self.snapshot());
        Ok(query.page(&view, page_size.unwrap_or(PAGE_SIZE_DEFAULT), continuation)?)
    }
}
