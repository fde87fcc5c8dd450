//! The running config of a managed gateway: its bootstrap config (the
//! file it was started with) plus the drivers of the deployment in force,
//! each plugin pointing at its kept file by content hash and pinned to its
//! signed name.

use std::path::Path;

use super::{Deployment, Store};
use crate::config::{Config, ConfigError};

/// A deployment's drivers as config text, ready to follow a bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The deployment they come from.
    pub deployment: u64,
    /// `[[driver]]` tables.
    text: String,
    /// The first line (0-based, within `text`) of each driver's table.
    starts: Vec<usize>,
}

/// The drivers of `deployment` as config text, their plugins in `store`.
pub fn layer(deployment: &Deployment, store: &Store) -> Result<Layer, String> {
    let mut text = String::new();
    let mut starts = Vec::with_capacity(deployment.drivers.len());
    for (index, driver) in deployment.drivers.iter().enumerate() {
        let at = |e: String| format!("drivers[{index}]: {e}");
        let mut driver = driver.clone();
        pin(&mut driver, deployment, store).map_err(at)?;
        let processors = driver
            .get_mut("processor")
            .and_then(serde_json::Value::as_array_mut);
        for (p, processor) in processors.into_iter().flatten().enumerate() {
            pin(processor, deployment, store).map_err(|e| at(format!("processor[{p}]: {e}")))?;
        }
        let table = toml::Value::try_from(&driver)
            .map_err(|e| at(format!("cannot be written as config: {e}")))?;
        #[derive(serde::Serialize)]
        struct Tables<'a> {
            driver: [&'a toml::Value; 1],
        }
        let part = toml::to_string(&Tables { driver: [&table] })
            .map_err(|e| at(format!("cannot be written as config: {e}")))?;
        starts.push(text.lines().count());
        text.push_str(&part);
        text.push('\n');
    }
    Ok(Layer {
        deployment: deployment.deployment,
        text,
        starts,
    })
}

/// A driver or processor table: its `plugin` (a signed name) becomes the
/// kept file's path, and `plugin_name` pins the name.
fn pin(
    table: &mut serde_json::Value,
    deployment: &Deployment,
    store: &Store,
) -> Result<(), String> {
    let object = table
        .as_object_mut()
        .ok_or("expected a table of settings")?;
    if object.contains_key("plugin_name") {
        return Err("plugin_name is set by the gateway from the plugin list; leave it out".into());
    }
    let name = object
        .get("plugin")
        .and_then(serde_json::Value::as_str)
        .ok_or("plugin: expected the signed name of a plugin in the plugin list")?;
    let plugin = (deployment.plugins.iter())
        .find(|p| p.name == name)
        .ok_or_else(|| format!("plugin {name:?} is not in the plugin list"))?;
    let path = store.plugin_path(&plugin.sha256);
    let path = path
        .to_str()
        .ok_or("the data directory's path is not UTF-8")?;
    object.insert("plugin_name".into(), name.into());
    object.insert("plugin".into(), path.into());
    Ok(())
}

/// The config a managed gateway runs: `bootstrap` (the text of the file at
/// `path`) followed by `layer`'s drivers. An error in the deployment's
/// part names the deployment and the driver instead of a line of the
/// composed text.
pub fn compose(bootstrap: &str, path: &Path, layer: Option<&Layer>) -> Result<Config, String> {
    let Some(layer) = layer else {
        return Config::parse(bootstrap, path).map_err(|e| e.to_string());
    };
    let header = format!("\n\n# deployment {}\n", layer.deployment);
    let offset = bootstrap.lines().count() + header.lines().count() - 1;
    let text = format!("{bootstrap}{header}{}", layer.text);
    Config::parse(&text, path).map_err(|e| match e {
        ConfigError::Syntax { line, message, .. } | ConfigError::Invalid { line, message, .. }
            if line > offset =>
        {
            let line = line - offset - 1;
            let index = layer.starts.iter().rposition(|s| *s <= line).unwrap_or(0);
            format!(
                "deployment {}: drivers[{index}]: {message}",
                layer.deployment
            )
        }
        e => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{Health, PluginRef, SCHEMA, Target};

    fn deployment(drivers: Vec<serde_json::Value>) -> Deployment {
        Deployment {
            schema: SCHEMA,
            deployment: 4,
            target: Target::Gateway("gw".into()),
            issued_ms: 1,
            health: Health::default(),
            plugins: vec![PluginRef {
                name: "sim".into(),
                version: semver::Version::new(1, 0, 0),
                sha256: "ab".repeat(32),
                size: 8,
            }],
            drivers,
        }
    }

    #[test]
    fn a_deployment_s_drivers_follow_the_bootstrap_and_its_errors_name_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(store.plugin_path(&"ab".repeat(32)), b"12345678").unwrap();
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let bootstrap = "[gateway]\nid = \"gw\"\n[mqtt]\nhost = \"b\"\nca_file = \"ca.pem\"\n[trust]\noperator_keys = []\n[[driver]]\nname = \"local\"\nplugin = \"deploy/plugins/".to_string() + &"ab".repeat(32) + ".wasm\"\ninterval_ms = 100\n";
        let path = dir.path().join("gw.toml");
        let ok = deployment(vec![serde_json::json!({
            "name": "m1", "plugin": "sim", "interval_ms": 250,
            "config": {"unit": 7},
            "processor": [{"name": "p", "plugin": "sim"}],
        })]);
        let layer = layer(&ok, &store).unwrap();
        let config = compose(&bootstrap, &path, Some(&layer)).unwrap();
        assert_eq!(config.drivers.len(), 2);
        let m1 = &config.drivers[1];
        assert_eq!(m1.plugin.get_ref(), &store.plugin_path(&"ab".repeat(32)));
        assert_eq!(m1.plugin_name.as_ref().unwrap().get_ref(), "sim");
        assert_eq!(
            m1.processors[0].plugin_name.as_ref().unwrap().get_ref(),
            "sim"
        );
        assert_eq!(m1.config["unit"].as_integer(), Some(7));

        // The second driver's interval is wrong: the error names it.
        let bad = deployment(vec![
            serde_json::json!({"name": "m1", "plugin": "sim", "interval_ms": 250}),
            serde_json::json!({"name": "m2", "plugin": "sim", "interval_ms": 0}),
        ]);
        let err = compose(
            &bootstrap,
            &path,
            Some(&super::layer(&bad, &store).unwrap()),
        )
        .unwrap_err();
        assert!(
            err.starts_with("deployment 4: drivers[1]: interval_ms"),
            "{err}"
        );
        // A name the bootstrap already uses.
        let clash = deployment(vec![
            serde_json::json!({"name": "local", "plugin": "sim", "interval_ms": 5}),
        ]);
        let err = compose(
            &bootstrap,
            &path,
            Some(&super::layer(&clash, &store).unwrap()),
        )
        .unwrap_err();
        assert!(err.contains("drivers[0]: duplicate driver name"), "{err}");
        // A key no driver has.
        let typo = deployment(vec![
            serde_json::json!({"name": "x", "plugin": "sim", "interval_ms": 5, "intervall": 1}),
        ]);
        let err = compose(
            &bootstrap,
            &path,
            Some(&super::layer(&typo, &store).unwrap()),
        )
        .unwrap_err();
        assert!(
            err.contains("deployment 4: drivers[0]: unknown field"),
            "{err}"
        );
        // The gateway pins plugin names itself.
        let pinned = deployment(vec![
            serde_json::json!({"name": "x", "plugin": "sim", "plugin_name": "y"}),
        ]);
        assert!(
            super::layer(&pinned, &store)
                .unwrap_err()
                .contains("plugin_name")
        );
    }
}
