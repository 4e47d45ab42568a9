use twinhub_core::json::DeviceDocumentError;
use twinhub_core::{DeviceId, TwinRuleViolation};
use twinhub_store::StoreError;

/// Everything a hub operation can refuse or fail with. Transports map these to their wire in one place
/// each (an HTTP status with IoT Hub's error code, an MQTT twin status, an AMQP outcome).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Device {0} not found")]
    DeviceNotFound(DeviceId),
    #[error("A device with ID '{0}' is already registered.")]
    DeviceAlreadyExists(DeviceId),
    #[error("Module {module} of device {device} not found")]
    ModuleNotFound {
        device: DeviceId,
        module: twinhub_core::ModuleId,
    },
    #[error("A module with ID '{module}' is already registered on device '{device}'.")]
    ModuleAlreadyExists {
        device: DeviceId,
        module: twinhub_core::ModuleId,
    },
    #[error("Precondition failed: the etag '{given}' does not match the current etag of '{device}'")]
    PreconditionFailed { device: DeviceId, given: String },
    #[error("{0}")]
    TwinRule(#[from] TwinRuleViolation),
    #[error("{0}")]
    DeviceDocument(#[from] DeviceDocumentError),
    #[error("{0}")]
    DeviceScope(#[from] twinhub_core::device_scope::ScopeError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ConsumerGroupName(#[from] twinhub_core::consumer_group::ConsumerGroupNameError),
    #[error("The consumer group '{0}' does not exist")]
    ConsumerGroupNotFound(String),
    #[error("the message is {0} bytes with its properties, more than the 262144 bytes IoT Hub allows")]
    MessageTooLarge(usize),
    #[error("the device ids in the request must be unique; '{0}' appears more than once")]
    DeviceDefinedMultipleTimes(DeviceId),
    #[error("{0}")]
    Query(#[from] twinhub_query::QueryError),
    #[error("{0}")]
    Routing(#[from] crate::routing::RoutingError),
    #[error("The device '{0}' is not online: it is not connected, or not subscribed to direct methods")]
    DeviceNotOnline(String),
    #[error("Timed out waiting for the device to answer the method within {0} seconds")]
    MethodTimeout(u64),
    #[error("{0}")]
    MethodCall(#[from] twinhub_core::method::MethodCallError),
    #[error("{0}")]
    CloudToDevice(#[from] twinhub_core::c2d::QueueError),
    #[error("The configuration '{0}' does not exist")]
    ConfigurationNotFound(String),
    #[error("Precondition failed: the etag given is not the current etag of configuration '{0}'")]
    ConfigurationEtagMismatch(String),
    #[error("A hub keeps at most {0} configurations")]
    TooManyConfigurations(usize),
    #[error("The job '{0}' does not exist")]
    JobNotFound(twinhub_core::JobId),
    #[error("A job with ID '{0}' already exists")]
    JobAlreadyExists(twinhub_core::JobId),
    #[error("At most {0} jobs may be queued, scheduled or running at once")]
    JobQuotaExceeded(usize),
    #[error("the store failed; the write was not applied: {0}")]
    Store(#[source] StoreError),
    /// The bus between a cluster's nodes failed (NATS out of reach).
    #[error("the cluster's bus failed: {0}")]
    Bus(String),
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(&'static str),
}
