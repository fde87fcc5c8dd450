//! What the generated glue calls: a plugin instance with the channel table
//! it knows, turning the author's readings into wire batches and back.

use crate::channels::{ChannelId, ChannelRef, Channels, Reading};
use crate::types::generated as wt;
use crate::{DeviceStatus, Driver, Error, Processor, Quality, Value};

/// Readings as a wire batch; names not in `table` are declared in `added`.
/// The batch carries the readings' timestamp when they share one; good
/// floats and integers at the batch's time go in its columns.
fn to_batch(table: &mut Channels, mut readings: Vec<Reading>) -> wt::Batch {
    let first = readings.first().and_then(|r| r.timestamp_ns);
    let shared = first.filter(|_| readings.iter().all(|r| r.timestamp_ns == first));
    let mut batch = wt::Batch {
        added: Vec::new(),
        timestamp_ns: shared,
        readings: Vec::new(),
        floats: wt::FloatColumns {
            channels: Vec::with_capacity(readings.len()),
            values: Vec::with_capacity(readings.len()),
        },
        ints: wt::IntColumns {
            channels: Vec::new(),
            values: Vec::new(),
        },
    };
    // By reference: moving each reading out of the vector costs more than
    // the columns' copies (measured natively: about half the time).
    for r in &mut readings {
        let channel = table.resolve(r, &mut batch.added);
        let at_batch_time = r.timestamp_ns.is_none() || r.timestamp_ns == shared;
        match (&r.value, at_batch_time && r.quality == Quality::Good) {
            (Value::Float(v), true) => {
                batch.floats.channels.push(channel);
                batch.floats.values.push(*v);
            }
            (Value::Int(v), true) => {
                batch.ints.channels.push(channel);
                batch.ints.values.push(*v);
            }
            _ => batch.readings.push(wt::Reading {
                channel,
                // Moved out, not copied: text and bytes may be large.
                value: std::mem::replace(&mut r.value, Value::Boolean(false)),
                timestamp_ns: r.timestamp_ns.filter(|_| !at_batch_time),
                quality: r.quality,
            }),
        }
    }
    batch
}

/// The readings of a wire batch, by index, each with its timestamp.
fn from_batch(batch: wt::Batch) -> Vec<Reading> {
    let shared = batch.timestamp_ns;
    let at = |channel, value, timestamp_ns, quality| Reading {
        channel: ChannelRef::Id(ChannelId::at(channel)),
        value,
        timestamp_ns,
        quality,
        unit: None,
    };
    let (floats, ints) = (batch.floats, batch.ints);
    let mut readings =
        Vec::with_capacity(batch.readings.len() + floats.values.len() + ints.values.len());
    readings.extend(
        (batch.readings.into_iter())
            .map(|r| at(r.channel, r.value, r.timestamp_ns.or(shared), r.quality)),
    );
    let good = |c, v| at(c, v, shared, Quality::Good);
    let floats = floats.channels.into_iter().zip(floats.values);
    readings.extend(floats.map(|(c, v)| good(c, Value::Float(v))));
    let ints = ints.channels.into_iter().zip(ints.values);
    readings.extend(ints.map(|(c, v)| good(c, Value::Int(v))));
    readings
}

/// A driver and its channel table.
pub struct DriverState<D> {
    plugin: D,
    channels: Channels,
}

impl<D: Driver> DriverState<D> {
    /// Builds the driver from its JSON config; returns its declared channels.
    pub fn init(config: &str) -> Result<(Self, Vec<wt::Channel>), Error> {
        let plugin = D::new(crate::parse_config(config)?)?;
        let declared = plugin.channels();
        let channels = declared.iter().cloned().collect();
        Ok((DriverState { plugin, channels }, declared))
    }

    /// Polls the driver.
    pub fn poll(&mut self) -> Result<wt::Batch, Error> {
        let readings = self.plugin.poll()?;
        Ok(to_batch(&mut self.channels, readings))
    }

    /// Writes to the channel at `index`, by its name.
    pub fn write(&mut self, index: u32, value: crate::Value) -> Result<(), Error> {
        let Some(channel) = self.channels.get(ChannelId::at(index)) else {
            return Err(Error::Unsupported(format!("no channel at index {index}")));
        };
        let name = channel.name.clone();
        self.plugin.write(&name, value)
    }

    /// The driver's device status.
    pub fn status(&self) -> DeviceStatus {
        self.plugin.status()
    }
}

/// A processor and the channel table it has seen.
pub struct ProcessorState<P> {
    plugin: P,
    channels: Channels,
}

impl<P: Processor> ProcessorState<P> {
    /// Builds the processor; returns the channels it derives.
    pub fn init(config: &str, input: Vec<wt::Channel>) -> Result<(Self, Vec<wt::Channel>), Error> {
        let mut plugin = P::new(crate::parse_config(config)?)?;
        let mut channels: Channels = input.into_iter().collect();
        let derived = plugin.channels(&channels)?;
        channels.extend(derived.iter().cloned());
        Ok((ProcessorState { plugin, channels }, derived))
    }

    /// Runs the processor on one wire batch.
    pub fn process(&mut self, mut batch: wt::Batch) -> Result<wt::Batch, Error> {
        self.channels.extend(std::mem::take(&mut batch.added));
        let readings = from_batch(batch);
        let out = self.plugin.process(readings, &self.channels)?;
        Ok(to_batch(&mut self.channels, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, Quality, Value, ValueType};

    /// Counts by name: "a" in degC, then "b" once it has polled twice.
    struct ByName(u32);

    impl Driver for ByName {
        type Config = ();
        fn new((): ()) -> Result<Self, Error> {
            Ok(ByName(0))
        }
        fn poll(&mut self) -> Result<Vec<Reading>, Error> {
            self.0 += 1;
            let mut out = vec![Reading::new("a", 1.5).with_unit("degC")];
            if self.0 > 1 {
                out.push(Reading::new("b", i64::from(self.0)));
            }
            Ok(out)
        }
        fn write(&mut self, channel: &str, value: Value) -> Result<(), Error> {
            Err(Error::Other(format!("{channel}={value:?}")))
        }
    }

    #[test]
    fn names_are_declared_once_in_the_batch_that_first_uses_them() {
        let (mut d, declared) = DriverState::<ByName>::init("{}").unwrap();
        assert!(declared.is_empty());
        let first = d.poll().unwrap();
        assert_eq!(first.added.len(), 1);
        assert_eq!(first.added[0].name, "a");
        assert_eq!(first.added[0].unit.as_deref(), Some("degC"));
        assert_eq!(first.added[0].value_type, ValueType::Float);
        assert_eq!(first.floats.channels, [0]);
        let second = d.poll().unwrap();
        let added: Vec<&str> = second.added.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(added, ["b"]);
        assert_eq!(
            (second.floats.channels, second.ints.channels),
            (vec![0], vec![1])
        );
        assert!(d.poll().unwrap().added.is_empty());
        // A write by index reaches the driver by name.
        let e = d.write(1, Value::Int(7)).unwrap_err();
        assert_eq!(e, Error::Other("b=Value::Int(7)".into()));
        assert!(matches!(
            d.write(9, Value::Int(7)),
            Err(Error::Unsupported(_))
        ));
    }

    /// Declares two channels and reads them by id.
    struct ById;

    impl Driver for ById {
        type Config = ();
        fn new((): ()) -> Result<Self, Error> {
            Ok(ById)
        }
        fn channels(&self) -> Vec<Channel> {
            vec![
                Channel::new("t", ValueType::Float)
                    .unit("degC")
                    .range(-40.0, 125.0),
                Channel::new("on", ValueType::Boolean).writable(),
            ]
        }
        fn poll(&mut self) -> Result<Vec<Reading>, Error> {
            Ok(vec![
                Reading::new(ChannelId::at(1), true),
                Reading::new(ChannelId::at(0), 21.0).at(5),
            ])
        }
    }

    #[test]
    fn declared_channels_go_by_index_with_nothing_added() {
        let (mut d, declared) = DriverState::<ById>::init("null").unwrap();
        assert_eq!(declared.len(), 2);
        assert!(declared[1].writable && !declared[0].writable);
        let batch = d.poll().unwrap();
        assert!(batch.added.is_empty());
        let got: Vec<(u32, Option<u64>)> = batch
            .readings
            .iter()
            .map(|r| (r.channel, r.timestamp_ns))
            .collect();
        assert_eq!(got, [(1, None), (0, Some(5))]);
    }

    #[test]
    fn good_numbers_at_the_batch_time_go_in_columns_and_read_back_the_same() {
        let mut table: Channels = [
            Channel::new("t", ValueType::Float),
            Channel::new("n", ValueType::Int),
            Channel::new("s", ValueType::Text),
        ]
        .into_iter()
        .collect();
        let readings = vec![
            Reading::new(ChannelId::at(0), 1.5).at(9),
            Reading::new(ChannelId::at(1), 7).at(9),
            Reading::new(ChannelId::at(2), "open").at(9),
            Reading::new(ChannelId::at(0), 2.5)
                .at(9)
                .with_quality(Quality::Bad),
        ];
        let batch = to_batch(&mut table, readings.clone());
        assert_eq!(batch.timestamp_ns, Some(9));
        assert_eq!(
            (&batch.floats.channels, &batch.floats.values),
            (&vec![0], &vec![1.5])
        );
        assert_eq!(
            (&batch.ints.channels, &batch.ints.values),
            (&vec![1], &vec![7])
        );
        let rest: Vec<(u32, Option<u64>)> = batch
            .readings
            .iter()
            .map(|r| (r.channel, r.timestamp_ns))
            .collect();
        assert_eq!(rest, [(2, None), (0, None)]);
        // Back in batch order: `readings`, then `floats`, then `ints`.
        let back = from_batch(batch);
        let order = [2, 3, 0, 1];
        assert_eq!(back, order.map(|i| readings[i].clone()));
        // Readings at different times keep their own; unstamped ones
        // still go in columns, at the time the runtime receives them.
        let mixed = to_batch(
            &mut table,
            vec![
                Reading::new(ChannelId::at(0), 1.0).at(5),
                Reading::new(ChannelId::at(1), 2),
            ],
        );
        assert_eq!(mixed.timestamp_ns, None);
        assert_eq!(mixed.readings[0].timestamp_ns, Some(5));
        assert_eq!(mixed.ints.channels, [1]);
    }

    /// Doubles "t" into a derived "t2" and drops the rest.
    struct Double {
        t: Option<ChannelId>,
        t2: Option<ChannelId>,
    }

    impl Processor for Double {
        type Config = ();
        fn new((): ()) -> Result<Self, Error> {
            Ok(Double { t: None, t2: None })
        }
        fn channels(&mut self, input: &Channels) -> Result<Vec<Channel>, Error> {
            self.t = input.id("t");
            self.t2 = Some(input.next_id());
            Ok(vec![Channel::new("t2", ValueType::Float)])
        }
        fn process(
            &mut self,
            batch: Vec<Reading>,
            channels: &Channels,
        ) -> Result<Vec<Reading>, Error> {
            let mut out = Vec::new();
            for r in batch {
                match (r.id(), r.value.as_f64()) {
                    (id, Some(v)) if id == self.t => {
                        out.push(Reading {
                            channel: self.t2.unwrap().into(),
                            value: Value::Float(v * 2.0),
                            ..r
                        });
                    }
                    _ if channels.name(&r) == Some("late") => {
                        out.push(
                            Reading::new("late-copy", r.value).with_quality(Quality::Uncertain),
                        );
                    }
                    _ => {}
                }
            }
            Ok(out)
        }
    }

    fn wire_batch(added: Vec<Channel>, ts: Option<u64>, readings: Vec<wt::Reading>) -> wt::Batch {
        wt::Batch {
            added,
            timestamp_ns: ts,
            readings,
            floats: wt::FloatColumns {
                channels: Vec::new(),
                values: Vec::new(),
            },
            ints: wt::IntColumns {
                channels: Vec::new(),
                values: Vec::new(),
            },
        }
    }

    fn wire(channel: u32, value: Value, ts: Option<u64>) -> wt::Reading {
        wt::Reading {
            channel,
            value,
            timestamp_ns: ts,
            quality: Quality::Good,
        }
    }

    #[test]
    fn processors_learn_added_channels_and_derive_by_index_or_name() {
        let input = vec![
            Channel::new("x", ValueType::Int),
            Channel::new("t", ValueType::Float),
        ];
        let (mut p, derived) = ProcessorState::<Double>::init("{}", input).unwrap();
        assert_eq!(derived.len(), 1);
        let out = p
            .process(wire_batch(
                Vec::new(),
                Some(42),
                vec![
                    wire(0, Value::Int(1), None),
                    wire(1, Value::Float(1.5), None),
                ],
            ))
            .unwrap();
        assert!(out.added.is_empty() && out.readings.is_empty());
        assert_eq!(out.timestamp_ns, Some(42));
        assert_eq!(
            (out.floats.channels, out.floats.values),
            (vec![2], vec![3.0])
        );
        // The driver grew a channel ("late", index 3): it arrives in `added`.
        let out = p
            .process(wire_batch(
                vec![Channel::new("late", ValueType::Int)],
                None,
                vec![wire(3, Value::Int(9), Some(7))],
            ))
            .unwrap();
        let added: Vec<&str> = out.added.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(added, ["late-copy"]);
        assert_eq!(out.readings[0].channel, 4);
    }

    #[test]
    fn unit_config_takes_an_empty_table_and_refuses_keys() {
        assert!(crate::parse_config::<()>("{}").is_ok());
        assert!(crate::parse_config::<()>("null").is_ok());
        let e = crate::parse_config::<()>(r#"{"x":1}"#).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    }

    #[test]
    fn common_errors_convert_with_question_mark() {
        fn read() -> Result<(), Error> {
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut))?;
            Ok(())
        }
        fn parse() -> Result<i64, Error> {
            Ok("x".parse::<i64>()?)
        }
        assert!(matches!(read(), Err(Error::Timeout(_))));
        assert!(matches!(parse(), Err(Error::Protocol(_))));
        let refused = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused, Error::Unavailable(_)));
        assert_eq!(Error::from("boom").message(), "boom");
    }
}
