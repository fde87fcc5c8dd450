//! The session's Sparkplug side: births and deaths placed among the data
//! lane's messages, queue entries made into DDATA, and NCMD, DCMD and
//! STATE messages taken.

use std::sync::atomic::{AtomicU64, Ordering};

use super::session::{LaneKind, Outbound, Session, SessionError};
use super::sparkplug::{Incoming, SeqMark};
use crate::remote::Incoming as Command;

/// Numbers the commands a DCMD becomes, for their results and the log.
static DCMD_IDS: AtomicU64 = AtomicU64::new(1);

impl Session<'_> {
    /// Puts Sparkplug births or deaths after what the data lane holds.
    fn queue_control(&mut self, messages: Vec<super::sparkplug::Message>) {
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.kind == LaneKind::Data) {
            lane.pending
                .extend(messages.into_iter().map(Outbound::control));
        }
    }

    /// NBIRTH and the DBIRTHs, after whatever the data lane already holds;
    /// none when births are already waiting there (a flood of rebirth
    /// requests costs one set).
    pub(super) fn births(&mut self) {
        let waiting = self.lanes.iter().any(|l| {
            l.kind == LaneKind::Data && l.pending.iter().any(|o| o.mark == SeqMark::Reset)
        });
        if waiting {
            tracing::debug!("Sparkplug births already waiting to be sent");
            return;
        }
        let Some(node) = self.node.as_deref_mut() else {
            return;
        };
        let births = node.births();
        tracing::info!(
            devices = births.len() - 1,
            "Sparkplug births: NBIRTH and a DBIRTH per device"
        );
        self.queue_control(births);
    }

    /// DDEATH for each born device whose driver stopped or fails.
    pub(super) fn device_deaths(&mut self) {
        let Some(node) = self.node.as_deref_mut().filter(|n| n.ready()) else {
            return;
        };
        let deaths = node.deaths();
        for d in &deaths {
            tracing::info!(topic = %d.topic, "Sparkplug DDEATH: the device is unavailable");
        }
        self.queue_control(deaths);
    }

    /// Queue entry `seq` of lane `i` as Sparkplug messages: a DBIRTH when
    /// due, then its DDATA (the messages the entry waits for).
    pub(super) fn encode_sparkplug(
        &mut self,
        i: usize,
        seq: u64,
        entry: &crate::queue::StoredEntry,
    ) -> Result<(), SessionError> {
        let batch = entry.batch()?;
        let Some(node) = self.node.as_deref_mut() else {
            return Ok(());
        };
        let data = node.data(seq, &batch, self.packet_limit);
        self.left_out_and_split(
            &batch.driver,
            seq,
            &data.too_large,
            data.budget,
            data.entry_messages,
        );
        let births = data.messages.len() - data.entry_messages;
        let lane = &mut self.lanes[i];
        lane.parts_left.insert(seq, data.entry_messages);
        for (n, m) in data.messages.into_iter().enumerate() {
            let mut out = Outbound::control(m);
            if n >= births {
                out.seq = seq;
                out.of_entry = true;
            }
            lane.pending.push_back(out);
        }
        Ok(())
    }

    /// A message on a Sparkplug topic; false when `topic` is not one.
    pub(super) fn on_sparkplug(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> Result<bool, SessionError> {
        let Some(node) = self.node.as_deref_mut() else {
            return Ok(false);
        };
        match node.settings().incoming(topic) {
            None => Ok(false),
            Some(Incoming::State) => {
                match node.state(payload) {
                    Some(true) => {
                        tracing::info!(topic = %topic, "the Sparkplug primary host is online");
                        self.births();
                    }
                    Some(false) => {
                        let host = node.settings().primary_host_id.clone().unwrap_or_default();
                        return Err(SessionError::HostOffline { host });
                    }
                    None => {}
                }
                Ok(true)
            }
            Some(Incoming::NodeCommand) => {
                match node.node_command(payload) {
                    Ok(true) if node.ready() => {
                        tracing::info!("Sparkplug NCMD: rebirth");
                        self.births();
                    }
                    Ok(true) => tracing::info!(
                        "Sparkplug NCMD rebirth before births: the births to come answer it"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(topic = %topic, error = %e, "Sparkplug NCMD ignored"),
                }
                Ok(true)
            }
            Some(Incoming::DeviceCommand(device)) => {
                let writes = match node.device_command(device, payload) {
                    Ok(writes) => writes,
                    Err(e) => {
                        tracing::warn!(topic = %topic, error = %e, "Sparkplug DCMD ignored");
                        return Ok(true);
                    }
                };
                let device = device.to_string();
                for write in writes {
                    let write = match write {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::warn!(device = %device, error = %e, "Sparkplug DCMD metric not honoured");
                            continue;
                        }
                    };
                    let id = format!(
                        "sparkplug-dcmd-{}",
                        DCMD_IDS.fetch_add(1, Ordering::Relaxed)
                    );
                    let command = serde_json::json!({"id": id, "channel": write.channel, "value": write.value});
                    tracing::info!(device = %device, channel = %write.channel, id = %id, "Sparkplug DCMD: write handed to the driver");
                    let Some(commands) = self.commands.as_deref() else {
                        continue;
                    };
                    let incoming = Command {
                        driver: device.clone(),
                        payload: command.to_string().into_bytes(),
                    };
                    if let Err(e) = commands.inbox.try_send(incoming) {
                        tracing::warn!(device = %device, error = %e, "Sparkplug DCMD write dropped: too many commands waiting");
                    }
                }
                Ok(true)
            }
        }
    }
}
