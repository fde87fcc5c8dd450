//! `ferrule fleet`: the operator's side of deployments (docs/fleet.md).
//! Publishing and serving plugins over MQTT are not built yet; `sign`
//! makes the signed document a gateway will verify, `verify` checks one
//! as a gateway would.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use ferrule::deploy::{self, Target};

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Build a deployment document from a state file (drivers, and the
    /// signed plugin files they use) and sign it with an operator key.
    Sign {
        /// The operator's secret key (`ferrule plugin keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed document; stdout when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The state file (TOML).
        state: PathBuf,
    },
    /// Check a signed deployment document as a gateway would: the
    /// signature against the operator keys, the target, the number.
    Verify {
        /// A trusted operator public key (repeat for several).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// The gateway id to check it for.
        #[arg(long)]
        gateway: String,
        /// A group the gateway belongs to (repeat for several).
        #[arg(long)]
        group: Vec<String>,
        /// The deployment number the gateway has applied.
        #[arg(long)]
        applied: Option<u64>,
        file: PathBuf,
    },
}

pub fn run(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Sign { key, output, state } => {
            let deployment = deploy::from_state_file(&state).map_err(anyhow::Error::msg)?;
            let envelope = deploy::sign(&deployment, &key).map_err(anyhow::Error::msg)?;
            let json = serde_json::to_vec(&envelope)?;
            match &output {
                Some(path) => ferrule::plugin::trust::write_atomically(path, &json, None)
                    .with_context(|| format!("{}: cannot write", path.display()))?,
                None => println!("{}", String::from_utf8_lossy(&json)),
            }
            let target = match &deployment.target {
                Target::Gateway(id) => format!("gateway {id}"),
                Target::Group(group) => format!("group {group}"),
            };
            eprintln!(
                "deployment {} for {target}: {} plugin(s), {} driver(s); signed by key id {}",
                deployment.deployment,
                deployment.plugins.len(),
                deployment.drivers.len(),
                envelope.key_id
            );
            Ok(())
        }
        FleetCommand::Verify {
            key,
            gateway,
            group,
            applied,
            file,
        } => {
            let keys = ferrule::plugin::trust::public_keys(&key).map_err(anyhow::Error::msg)?;
            let message = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let to = deploy::Recipient {
                gateway: &gateway,
                groups: &group,
                applied,
                keys: &keys,
            };
            let deployment = deploy::verify(&message, &to)
                .map_err(|e| anyhow::anyhow!("{}: refused: {e}", file.display()))?;
            println!(
                "{}: deployment {} accepted for gateway {gateway}: {} plugin(s), {} driver(s)",
                file.display(),
                deployment.deployment,
                deployment.plugins.len(),
                deployment.drivers.len()
            );
            for p in &deployment.plugins {
                println!(
                    "  plugin {} {} sha256 {} ({} bytes)",
                    p.name, p.version, p.sha256, p.size
                );
            }
            Ok(())
        }
    }
}
