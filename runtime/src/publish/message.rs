//! Topic names and the JSON payload of a data message.

use serde::Serialize;

use crate::reading::{Batch, Reading};

/// Topic layout: `{prefix}/{gateway}/data/{driver}` and `{prefix}/{gateway}/status`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, gateway: &str) -> Topics {
        Topics {
            base: format!("{prefix}/{gateway}"),
        }
    }

    pub fn data(&self, driver: &str) -> String {
        format!("{}/data/{driver}", self.base)
    }

    /// Retained; "online" while connected, "offline" by will or on shutdown.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }
}

/// One data message: one queue entry.
#[derive(Debug, Serialize)]
struct DataMessage<'a> {
    gateway: &'a str,
    driver: &'a str,
    /// The queue sequence number: per gateway, increasing, never reused.
    seq: u64,
    captured_ns: u64,
    readings: &'a [Reading],
}

pub fn encode_data(gateway: &str, seq: u64, batch: &Batch) -> Result<Vec<u8>, serde_json::Error> {
    let message = DataMessage {
        gateway,
        driver: &batch.driver,
        seq,
        captured_ns: batch.captured_ns,
        readings: &batch.readings,
    };
    serde_json::to_vec(&message)
}
