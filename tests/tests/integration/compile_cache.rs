//! The compile cache is used when sound and never trusted blindly: a
//! corrupted entry is discarded and the plugin compiled again.

use ferrule::plugin::{EngineSettings, PluginEngine};
use ferrule_tests::plugin;

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_corrupt_cache_entry_is_discarded_and_recompiled() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = EngineSettings {
        max_instances: 8,
        max_memory_mb: 64,
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let sim = plugin("sim")?;
    PluginEngine::with_settings(&settings)?.load_driver(&sim)?;
    let cached = entries(dir.path());
    assert_eq!(
        cached.len(),
        1,
        "one entry after the first load: {cached:?}"
    );
    let good = std::fs::read(&cached[0])?;

    // Flip bytes in the middle of the compiled code.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0xFF;
    }
    std::fs::write(&cached[0], &bad)?;
    PluginEngine::with_settings(&settings)?.load_driver(&sim)?;
    let after = std::fs::read(&cached[0])?;
    assert_eq!(
        after, good,
        "the corrupt entry was replaced by a fresh compile"
    );

    // A truncated entry, too.
    std::fs::write(&cached[0], &good[..10])?;
    PluginEngine::with_settings(&settings)?.load_driver(&sim)?;
    assert_eq!(std::fs::read(&cached[0])?, good);
    Ok(())
}
