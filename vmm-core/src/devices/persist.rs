//! What a device saves for a snapshot and how it takes it back.
//!
//! Every device on a bus answers [`super::BusDevice::save_state`]; the default refuses,
//! so a device nobody taught to save makes the snapshot fail with its name instead of
//! restoring a guest whose device forgot what it was doing. States are serde structs
//! per device, encoded as JSON inside the snapshot's checksummed records.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{0} cannot be saved in a snapshot")]
    Unsupported(String),
    /// Temporary: requests in flight that will finish (the snapshot retries a while).
    #[error("{0}")]
    Busy(String),
    #[error("encoding the state: {0}")]
    Encode(String),
    #[error("the saved state does not decode: {0}")]
    Decode(String),
    #[error("the saved state does not fit this device: {0}")]
    Mismatch(String),
}

pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, PersistError> {
    serde_json::to_vec(state).map_err(|e| PersistError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PersistError> {
    serde_json::from_slice(bytes).map_err(|e| PersistError::Decode(e.to_string()))
}
