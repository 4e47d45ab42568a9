//! The heart of twinhub, with no I/O: device identities, the twin document and the rules for changing it,
//! versions and metadata, shared access policies and SAS tokens.
//!
//! Every transport (REST, MQTT, AMQP) and every store works with these types; none of them is allowed to
//! change a twin except through [`twin::Twin::apply`] and friends, so that the rules hold everywhere.

pub mod c2d;
pub mod configuration;
pub mod consumer_group;
pub mod desired_delivery;
pub mod device;
pub mod device_auth;
pub mod device_scope;
pub mod etag;
pub mod event;
pub mod hub_event;
pub mod hub_message;
pub mod ids;
pub mod job;
pub mod json;
pub mod method;
pub mod module;
pub mod policy;
pub mod record;
pub mod routing;
pub mod rules;
pub mod sas;
pub mod session;
pub mod time;
pub mod twin;
pub mod value;

pub use device::{AuthenticationType, ConnectionState, DeviceIdentity, DeviceStatus, SymmetricKeys};
pub use ids::{DeviceId, InvalidId, JobId, ModuleId};
pub use record::DeviceRecord;
pub use rules::{TwinRuleViolation, TwinRules};
pub use time::Timestamp;
pub use twin::{Section, Twin, TwinPatch, TwinReplacement};
pub use value::{Object, Value};
