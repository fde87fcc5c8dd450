//! Remote commands through the publisher's connection: messages on the
//! command topics go to the router, its answers come back to be published.

use crate::remote::{Answer, Commands, Incoming};

use super::session::Session;

/// The next command result, or never when there is no command path.
pub(super) async fn next_answer(commands: Option<&mut Commands>) -> Option<Answer> {
    match commands {
        Some(c) => c.answers.recv().await,
        None => std::future::pending().await,
    }
}

impl Session<'_> {
    /// A message on a command topic: to the router.
    pub(super) fn on_message(&mut self, topic: &str, payload: Vec<u8>) {
        let Some(commands) = self.commands.as_deref_mut() else {
            return;
        };
        let Some(driver) = self.settings.topics.command_driver(topic) else {
            tracing::warn!(topic = %topic, "message on an unexpected topic ignored");
            return;
        };
        let incoming = Incoming {
            driver: driver.to_string(),
            payload,
        };
        if let Err(e) = commands.inbox.try_send(incoming) {
            tracing::warn!(topic = %topic, error = %e, "command dropped: too many commands waiting");
        }
    }
}
