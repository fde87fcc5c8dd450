//! The driver's configuration: the device, timing, and the register map.

use serde::Deserialize;

/// `[driver.config]` of a Modbus TCP driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port` of the device. Set by the runtime from the driver's
    /// `device` key, which is also the only address the driver may reach.
    pub device: String,
    /// Modbus unit (slave) id.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// How long to wait for each response.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra attempts for a request that timed out or lost the connection
    /// (each on a fresh connection).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Unused registers (or bits) bridged to merge two reads into one.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Requests the communication quality in `status()` is computed over.
    #[serde(default = "default_quality_window")]
    pub quality_window: usize,
    pub channels: Vec<Channel>,
}

fn default_unit_id() -> u8 {
    1
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_retries() -> u32 {
    1
}

fn default_max_gap() -> u16 {
    16
}

fn default_quality_window() -> usize {
    100
}

/// One value read from (and maybe written to) the device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub table: Table,
    /// 0-based register or bit address.
    pub address: u16,
    /// Defaults to `bool` for coils and discrete inputs, `u16` otherwise.
    #[serde(rename = "type")]
    pub kind: Option<DataType>,
    /// Order of the two bytes inside each register.
    #[serde(default)]
    pub byte_order: Order,
    /// Order of the registers of a multi-register value.
    #[serde(default)]
    pub word_order: Order,
    /// Reported value = raw * scale + offset (numbers only).
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub unit: Option<String>,
    /// Registers a `string` occupies (two characters each).
    pub length: Option<u16>,
}

fn default_scale() -> f64 {
    1.0
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Read/write registers (function 3; writes 6 and 16).
    Holding,
    /// Read-only registers (function 4).
    Input,
    /// Read/write bits (function 1; writes 5).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most registers or bits one read request may ask for.
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }
}

/// How a channel's registers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    /// Registers the type occupies (strings: their `length`).
    pub fn words(self, length: Option<u16>) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length.unwrap_or(0),
        }
    }
}

/// Byte order within a register, or register order within a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (the Modbus convention).
    #[default]
    Big,
    Little,
}

impl Channel {
    /// The channel's type, with the table's default.
    pub fn data_type(&self) -> DataType {
        self.kind.unwrap_or(if self.table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        })
    }

    /// The type of every value the channel reports: a scaled number is a
    /// float; a `u64` past `i64::MAX` is reported as a failed read.
    pub fn value_type(&self) -> ferrule_sdk::ValueType {
        use ferrule_sdk::ValueType as T;
        let scaled = self.scale != 1.0 || self.offset != 0.0;
        match self.data_type() {
            DataType::Bool => T::Boolean,
            DataType::String => T::Text,
            DataType::F32 | DataType::F64 => T::Float,
            _ if scaled => T::Float,
            _ => T::Int,
        }
    }

    /// Registers (or bits) the channel occupies.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type().words(self.length)
        }
    }
}

impl Config {
    /// Checks the register map; the error names the channel.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .device
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!(
                "device {:?}: expected \"host:port\" (set `device` on the driver)",
                self.device
            ));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be positive".to_string());
        }
        if self.channels.is_empty() {
            return Err("no channels configured".to_string());
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.channels {
            let what = format!("channel {:?}", c.name);
            if c.name.is_empty() || !names.insert(c.name.as_str()) {
                return Err(format!("{what}: names must be non-empty and unique"));
            }
            let kind = c.data_type();
            if c.table.is_bits() != (kind == DataType::Bool) {
                return Err(format!(
                    "{what}: a {} channel cannot have type {kind:?} (coils and discrete inputs are bool, registers are not)",
                    c.table.as_str()
                ));
            }
            if kind == DataType::String {
                match c.length {
                    Some(n) if (1..=125).contains(&n) => {}
                    _ => {
                        return Err(format!(
                            "{what}: a string needs `length` = 1 to 125 registers"
                        ));
                    }
                }
            } else if c.length.is_some() {
                return Err(format!("{what}: `length` is for strings only"));
            }
            if u32::from(c.address) + u32::from(c.width()) > 65536 {
                return Err(format!("{what}: runs past address 65535"));
            }
            if !c.scale.is_finite() || c.scale == 0.0 || !c.offset.is_finite() {
                return Err(format!(
                    "{what}: scale must be finite and non-zero, offset finite"
                ));
            }
        }
        Ok(())
    }
}
