//! The embedded store (placeholder: being implemented).
use crate::{Store, StoreError, StoreWrite};
use twinhub_core::DeviceRecord;

pub struct EmbeddedStore;

impl EmbeddedStore {
    pub fn open(_dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(EmbeddedStore)
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn commit(&self, _batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        Ok(())
    }
}
