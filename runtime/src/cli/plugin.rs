//! `ferrule plugin`: publisher keys, signing, verifying and inspecting
//! plugin files.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use ferrule::plugin::PluginEngine;
use ferrule::plugin::trust::{self, Identity, Provenance, TrustPolicy};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Make an Ed25519 publisher key pair: KEY (secret, mode 0600) and
    /// KEY.pub (for gateways' `[trust] publisher_keys`).
    Keygen {
        /// Where to write the secret key; never overwritten.
        #[arg(long, default_value = "publisher.key")]
        out: PathBuf,
    },
    /// Sign a plugin, writing its name and version into it first.
    Sign {
        /// The publisher's secret key.
        #[arg(long)]
        key: PathBuf,
        /// The plugin's name (kept in the signed bytes).
        #[arg(long, requires = "version")]
        name: Option<String>,
        /// The plugin's semver version (kept in the signed bytes).
        #[arg(long, requires = "name")]
        version: Option<String>,
        /// Where to write the signed plugin; FILE itself when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        file: PathBuf,
    },
    /// Check a plugin's signature against one or more public keys.
    Verify {
        /// A trusted public key (repeat for several).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        file: PathBuf,
    },
    /// What a plugin file is: world and ABI, imports and exports, size,
    /// SHA-256, signatures, signed name and version.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Keygen { out } => {
            let public = public_path(&out);
            let id = trust::keygen(&out, &public).map_err(anyhow::Error::msg)?;
            println!("secret key  {} (keep it off gateways)", out.display());
            println!("public key  {}", public.display());
            println!("key id      {id}");
            Ok(())
        }
        PluginCommand::Sign {
            key,
            name,
            version,
            output,
            file,
        } => {
            let identity = match (name, version) {
                (Some(n), Some(v)) => Some(Identity::new(&n, &v).map_err(anyhow::Error::msg)?),
                _ => None,
            };
            let bytes = read(&file)?;
            let (signed, id) =
                trust::sign(&bytes, &key, identity.as_ref()).map_err(anyhow::Error::msg)?;
            let out = output.unwrap_or_else(|| file.clone());
            let permissions = std::fs::metadata(&file)?.permissions();
            trust::write_atomically(&out, &signed, Some(permissions))
                .with_context(|| format!("{}: cannot write", out.display()))?;
            println!(
                "{}: signed by key id {id}{}",
                out.display(),
                identity.map(|i| format!(" as {i}")).unwrap_or_default()
            );
            Ok(())
        }
        PluginCommand::Verify { key, file } => {
            let policy = TrustPolicy::from_files(&key, Some(true)).map_err(anyhow::Error::msg)?;
            let bytes = read(&file)?;
            let admitted = policy
                .admit(&bytes)
                .map_err(|refusal| anyhow::anyhow!("{}: refused: {refusal}", file.display()))?;
            println!("{}: ok: {}", file.display(), origin(&admitted));
            Ok(())
        }
        PluginCommand::Inspect { file, json } => inspect(&file, json),
    }
}

/// `KEY.pub` beside `KEY`.
fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))
}

/// One line on where a loaded plugin came from.
pub fn origin(p: &Provenance) -> String {
    let signer = match &p.signer {
        Some(id) => format!("signed by key id {id}"),
        None => "UNSIGNED (not verified)".to_string(),
    };
    let identity = p
        .identity
        .as_ref()
        .map(|i| format!(", {i}"))
        .unwrap_or_default();
    format!("{signer}{identity}, sha256 {}", &p.sha256)
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let seen = trust::inspect(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let engine = PluginEngine::new()?;
    let description = engine.describe(file)?;
    let needs = ferrule::plugin::ComponentNeeds::of(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if json {
        let out = serde_json::json!({
            "file": file,
            "size": seen.size,
            "sha256": seen.sha256,
            "signatures": seen.signatures,
            "identity": seen.identity,
            "world": description.world.map(|(kind, abi)| serde_json::json!({"kind": kind, "abi": abi})),
            "exports": description.exports,
            "imports": description.imports,
            "instance_needs": {
                "core_instances": needs.core_instances,
                "memories": needs.memories,
                "tables": needs.tables,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("file        {}", file.display());
    println!("size        {} bytes", seen.size);
    println!("sha256      {}", seen.sha256);
    match description.world {
        Some((kind, abi)) => println!("world       {}-plugin of {abi}", kind.interface()),
        None => println!("world       not a ferrule plugin world"),
    }
    println!(
        "instance    {} core instances, {} memories, {} tables (its share of the instance pool)",
        needs.core_instances, needs.memories, needs.tables
    );
    match &seen.identity {
        Some(i) => println!("identity    {} version {}", i.name, i.version),
        None => println!("identity    none (sign with --name and --version)"),
    }
    if seen.signatures.is_empty() {
        println!("signatures  none");
    }
    for id in &seen.signatures {
        println!(
            "signature   key id {}",
            id.as_deref().unwrap_or("(none given)")
        );
    }
    for e in &description.exports {
        println!("export      {e}");
    }
    for i in &description.imports {
        println!("import      {i}");
    }
    if description.world.is_none() {
        bail!("{}: not a ferrule plugin", file.display());
    }
    Ok(())
}
