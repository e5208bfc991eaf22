//! Small helpers with no domain knowledge: ids, timestamps, canonical JSON, secrets.

pub mod id;
pub mod secret;
pub mod time;
