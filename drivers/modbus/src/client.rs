//! The driver: one TCP connection to the device, the coalesced reads every
//! poll, writes, and the health figures `status()` reports.
//!
//! Failures never take the driver down. A request the device refuses
//! (exception) or answers wrongly makes its channels' readings `bad`, with
//! the error as the value; a timeout or a lost connection is retried on a
//! fresh connection up to `retries` times, then the rest of the poll is
//! `bad` and the next poll reconnects. A poll that cannot connect at all
//! returns `Unavailable`, which the runtime counts as a failed poll.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ferrule_sdk::{Channel as Declared, ChannelId, DeviceStatus, Error, Quality, Reading, Value};

use crate::codec::{self, Data, HEADER_LEN, Pending, ResponseError};
use crate::config::{Config, Table};
use crate::convert;
use crate::plan::{ReadRequest, plan};

/// Counters kept by the driver and reported in `status()`.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub transaction_mismatches: u64,
    pub malformed: u64,
    pub connects: u64,
    pub connect_failures: u64,
}

/// Why one request failed.
enum Failure {
    /// The device answered, but not with the data (the link is fine).
    Answer(ResponseError),
    /// The link is unusable: I/O error, timeout, or out of step.
    Link(String),
}

pub struct Modbus {
    config: Config,
    plan: Vec<ReadRequest>,
    stream: Option<TcpStream>,
    next_transaction: u16,
    /// Outcomes of the last `quality_window` requests.
    window: VecDeque<bool>,
    counters: Counters,
    last_error: Option<String>,
}

impl Modbus {
    /// Checks the config and plans the reads; does not connect.
    pub fn new(config: Config) -> Result<Modbus, Error> {
        config.validate().map_err(Error::InvalidConfig)?;
        let plan = plan(&config.channels, config.max_gap);
        Ok(Modbus {
            plan,
            stream: None,
            next_transaction: 1,
            window: VecDeque::with_capacity(config.quality_window.max(1)),
            counters: Counters::default(),
            last_error: None,
            config,
        })
    }

    /// The read requests one poll makes.
    pub fn plan(&self) -> &[ReadRequest] {
        &self.plan
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn connect(&mut self) -> Result<(), Error> {
        if self.stream.is_some() {
            return Ok(());
        }
        let device = &self.config.device;
        let stream = TcpStream::connect(device.as_str()).and_then(|s| {
            s.set_read_timeout(Some(self.timeout()))?;
            s.set_write_timeout(Some(self.timeout()))?;
            s.set_nodelay(true)?;
            Ok(s)
        });
        match stream {
            Ok(s) => {
                self.counters.connects += 1;
                self.stream = Some(s);
                Ok(())
            }
            Err(e) => {
                self.counters.connect_failures += 1;
                let message = format!("cannot connect to {device}: {e}");
                self.last_error = Some(message.clone());
                Err(Error::Unavailable(message))
            }
        }
    }

    fn disconnect(&mut self) {
        self.stream = None;
    }

    fn record(&mut self, ok: bool) {
        if self.window.len() >= self.config.quality_window.max(1) {
            self.window.pop_front();
        }
        self.window.push_back(ok);
        if ok {
            self.counters.requests_ok += 1;
        } else {
            self.counters.requests_failed += 1;
        }
    }

    fn transaction(&mut self) -> u16 {
        let id = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1).max(1);
        id
    }

    /// Sends `pending` and reads one whole answer frame.
    fn exchange(&mut self, pending: &Pending) -> Result<Vec<u8>, Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Link("not connected".into()));
        };
        let io = |e: std::io::Error| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                Failure::Link("timeout".into())
            } else {
                Failure::Link(e.to_string())
            }
        };
        stream.write_all(&pending.frame).map_err(io)?;
        let mut header = [0u8; HEADER_LEN];
        stream.read_exact(&mut header).map_err(io)?;
        let rest = codec::remaining_len(&header).map_err(|e| Failure::Link(e.to_string()))?;
        let mut frame = Vec::with_capacity(HEADER_LEN + rest);
        frame.extend_from_slice(&header);
        frame.resize(HEADER_LEN + rest, 0);
        stream.read_exact(&mut frame[HEADER_LEN..]).map_err(io)?;
        Ok(frame)
    }

    /// Runs one request with retries; a link failure drops the connection.
    fn request<T>(
        &mut self,
        make: impl Fn(u16) -> Result<Pending, ResponseError>,
        decode: impl Fn(&Pending, &[u8]) -> Result<T, ResponseError>,
    ) -> Result<T, String> {
        let mut attempt = 0;
        loop {
            let result = match self.connect() {
                Err(e) => Err(Failure::Link(e.to_string())),
                Ok(()) => {
                    let tr = self.transaction();
                    match make(tr) {
                        Err(e) => Err(Failure::Answer(e)),
                        Ok(pending) => self.exchange(&pending).and_then(|frame| {
                            decode(&pending, &frame).map_err(|e| match e {
                                // Out of step: a late answer to an earlier request.
                                ResponseError::TransactionMismatch { .. } => {
                                    Failure::Link(e.to_string())
                                }
                                other => Failure::Answer(other),
                            })
                        }),
                    }
                }
            };
            match result {
                Ok(value) => {
                    self.record(true);
                    return Ok(value);
                }
                Err(Failure::Answer(e)) => {
                    self.record(false);
                    match &e {
                        ResponseError::Exception(_) => self.counters.exceptions += 1,
                        _ => self.counters.malformed += 1,
                    }
                    let message = e.to_string();
                    self.last_error = Some(message.clone());
                    return Err(message);
                }
                Err(Failure::Link(message)) => {
                    self.record(false);
                    if message == "timeout" {
                        self.counters.timeouts += 1;
                    } else if message.contains("transaction id") {
                        self.counters.transaction_mismatches += 1;
                    }
                    self.disconnect();
                    let message = format!("{}: {message}", self.config.device);
                    self.last_error = Some(message.clone());
                    if attempt >= self.config.retries {
                        return Err(message);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Reads every channel: one reading each, `bad` where its request failed.
    pub fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        // Nothing to report if the device cannot be reached at all.
        self.connect()?;
        let unit = self.config.unit_id;
        let mut readings = Vec::with_capacity(self.config.channels.len());
        let plan = self.plan.clone();
        let mut link_down: Option<String> = None;
        for read in &plan {
            let result = match &link_down {
                Some(why) => Err(why.clone()),
                None => self.request(
                    |tr| codec::encode_read(unit, tr, read),
                    |pending, frame| codec::decode_read(pending, read, frame),
                ),
            };
            if result.is_err() && self.stream.is_none() && link_down.is_none() {
                link_down = result.as_ref().err().cloned();
            }
            for &i in &read.channels {
                readings.push(self.reading(i, read, &result));
            }
        }
        if let Some(why) = link_down
            && readings.iter().all(|r| r.quality == Quality::Bad)
        {
            return Err(Error::Unavailable(why));
        }
        Ok(readings)
    }

    /// Channel `i`'s reading from its request's result.
    fn reading(&self, i: usize, read: &ReadRequest, result: &Result<Data, String>) -> Reading {
        let c = &self.config.channels[i];
        let offset = usize::from(c.address - read.start);
        let value = match result {
            Err(e) => Err(e.clone()),
            Ok(Data::Bits(bits)) => bits
                .get(offset)
                .map(|b| Value::Boolean(*b))
                .ok_or_else(|| "bit missing from the answer".to_string()),
            Ok(Data::Words(words)) => {
                let width = usize::from(c.width());
                match words.get(offset..offset + width) {
                    Some(slice) => {
                        convert::decode(c.data_type(), slice, c.byte_order, c.word_order)
                            .map(|raw| convert::scaled(c, raw))
                    }
                    None => Err("registers missing from the answer".to_string()),
                }
            }
        };
        let id = ChannelId::at(u32::try_from(i).unwrap_or(u32::MAX));
        let declared = c.value_type();
        let value = value.and_then(|v| {
            if v.value_type() == declared {
                Ok(v)
            } else {
                Err(format!(
                    "{v:?} does not fit the channel's {declared:?} type"
                ))
            }
        });
        match value {
            Ok(v) => Reading::new(id, v),
            // A bad reading carries its reason as text, whatever the type.
            Err(e) => Reading::new(id, Value::Text(e)).with_quality(Quality::Bad),
        }
    }

    /// The channel table, in config order: the `i`-th channel is
    /// `ChannelId::at(i)`. Holding registers and coils are writable.
    pub fn channels(&self) -> Vec<Declared> {
        self.config
            .channels
            .iter()
            .map(|c| {
                let mut d = Declared::new(c.name.clone(), c.value_type()).address(format!(
                    "{}:{}",
                    c.table.as_str(),
                    c.address
                ));
                if let Some(unit) = &c.unit {
                    d = d.unit(unit.clone());
                }
                if matches!(c.table, Table::Holding | Table::Coil) {
                    d = d.writable();
                }
                d
            })
            .collect()
    }

    /// Writes a channel: holding registers (function 6 or 16) or a coil (5).
    pub fn write(&mut self, channel: &str, value: Value) -> Result<(), Error> {
        let Some(c) = self.config.channels.iter().find(|c| c.name == channel) else {
            return Err(Error::Other(format!("no channel {channel:?}")));
        };
        let c = c.clone();
        let unit = self.config.unit_id;
        let invalid = |e: String| Error::Other(format!("channel {channel:?}: {e}"));
        let result = match c.table {
            Table::Input | Table::Discrete => {
                return Err(Error::Unsupported(format!(
                    "channel {channel:?} is a read-only {} channel",
                    c.table.as_str()
                )));
            }
            Table::Coil => {
                let words = convert::encode(c.data_type(), &value, 1, c.byte_order, c.word_order)
                    .map_err(invalid)?;
                let on = words.first().is_some_and(|w| *w != 0);
                self.request(
                    |tr| codec::encode_write_coil(unit, tr, c.address, on),
                    codec::decode_write,
                )
            }
            Table::Holding => {
                let raw = convert::unscaled(&c, value);
                let words =
                    convert::encode(c.data_type(), &raw, c.width(), c.byte_order, c.word_order)
                        .map_err(invalid)?;
                self.request(
                    |tr| codec::encode_write_registers(unit, tr, c.address, &words),
                    codec::decode_write,
                )
            }
        };
        result.map_err(|e| {
            if e.starts_with("device exception") {
                Error::Protocol(e)
            } else {
                Error::Unavailable(e)
            }
        })
    }

    /// Connected, communication quality over the last requests, last error.
    pub fn status(&self) -> DeviceStatus {
        let ok = self.window.iter().filter(|ok| **ok).count();
        let quality = if self.window.is_empty() {
            None
        } else {
            Some(((ok * 100) / self.window.len()) as u8)
        };
        let c = &self.counters;
        let mut extra = vec![
            ("device".to_string(), self.config.device.clone()),
            ("requests_ok".to_string(), c.requests_ok.to_string()),
            ("requests_failed".to_string(), c.requests_failed.to_string()),
            ("exceptions".to_string(), c.exceptions.to_string()),
            ("timeouts".to_string(), c.timeouts.to_string()),
            (
                "transaction_mismatches".to_string(),
                c.transaction_mismatches.to_string(),
            ),
            ("malformed".to_string(), c.malformed.to_string()),
            ("connects".to_string(), c.connects.to_string()),
            (
                "connect_failures".to_string(),
                c.connect_failures.to_string(),
            ),
        ];
        if let Some(e) = &self.last_error {
            extra.push(("last_error".to_string(), e.clone()));
        }
        DeviceStatus {
            connected: self.stream.is_some(),
            signal_quality: quality,
            extra,
            ..DeviceStatus::default()
        }
    }
}
