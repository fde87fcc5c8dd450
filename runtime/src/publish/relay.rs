//! Remote commands through the publisher's connection: messages on the
//! command topics go to the router, its answers come back to be published.

use crate::remote::{Answer, Commands, Incoming, Outgoing};

use super::session::Session;

async fn outbox(link: Option<&mut crate::remote::DeployLink>) -> Option<Outgoing> {
    match link {
        Some(link) => link.outbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Something the gateway's services hand the publisher to send.
pub(super) enum Out {
    /// A command result.
    Answer(Answer),
    /// A deployment message.
    Deploy(Outgoing),
}

/// The next command result or deployment message; never when there is
/// neither path.
pub(super) async fn next_out(commands: Option<&mut Commands>) -> Out {
    let Some(c) = commands else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some(answer) = c.answers.recv() => Out::Answer(answer),
        Some(out) = outbox(c.deploy.as_mut()) => Out::Deploy(out),
        Some(out) = outbox(c.erase.as_mut()) => Out::Deploy(out),
        else => std::future::pending().await,
    }
}

impl Session<'_> {
    /// A message on a command topic: to the router; on a deployment
    /// topic: to the deployment agent.
    pub(super) fn on_message(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), super::session::SessionError> {
        if self.on_sparkplug(topic, &payload)? {
            return Ok(());
        }
        let Some(commands) = self.commands.as_deref_mut() else {
            return Ok(());
        };
        if let Some(link) = commands.deploy.as_ref().filter(|l| l.wants(topic)) {
            // A chunk dropped here is asked for again; a document comes
            // again with the next connection (it is retained).
            if let Err(e) = link.inbox.try_send((topic.to_string(), payload)) {
                tracing::warn!(topic = %topic, error = %e, "deployment message dropped: too many waiting");
            }
            return Ok(());
        }
        if let Some(link) = commands.erase.as_ref().filter(|l| l.wants(topic)) {
            // The operator is answered for each order it sent; one dropped
            // here gets no answer and is sent again.
            if let Err(e) = link.inbox.try_send((topic.to_string(), payload)) {
                tracing::warn!(topic = %topic, error = %e, "erasure order dropped: too many waiting");
            }
            return Ok(());
        }
        let Some(driver) = self.settings.topics.command_driver(topic) else {
            tracing::warn!(topic = %topic, "message on an unexpected topic ignored");
            return Ok(());
        };
        let incoming = Incoming {
            driver: driver.to_string(),
            payload,
        };
        if let Err(e) = commands.inbox.try_send(incoming) {
            tracing::warn!(topic = %topic, error = %e, "command dropped: too many commands waiting");
        }
        Ok(())
    }
}
