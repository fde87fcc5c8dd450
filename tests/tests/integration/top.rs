//! `ferrule top` end to end: a running gateway (mosquitto, a sim driver
//! and a processor), the view in a tmux pane of 80×24 driven with
//! `send-keys` and read with `capture-pane`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::sim_scale_config;
use ferrule_tests::Rig;

/// A tmux server of the test's own (its socket in the test's directory),
/// killed when dropped.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn start(dir: &Path, command: &str) -> anyhow::Result<Tmux> {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let status = tmux
            .command()
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
            ])
            .args(["-s", "top"])
            .arg(command)
            .env("TERM", "xterm-256color")
            .status()?;
        anyhow::ensure!(status.success(), "tmux new-session failed");
        Ok(tmux)
    }

    fn screen(&self) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()?;
        anyhow::ensure!(out.status.success(), "tmux capture-pane failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn keys(&self, keys: &str) -> anyhow::Result<()> {
        let status = self
            .command()
            .args(["send-keys", "-t", "top", keys])
            .status()?;
        anyhow::ensure!(status.success(), "tmux send-keys failed");
        Ok(())
    }

    /// Waits until the screen shows every one of `needles`.
    async fn wait_for(&self, needles: &[&str], limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen()?;
            if needles.iter().all(|n| screen.contains(n)) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                anyhow::bail!("the screen never showed {needles:?}; it shows:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn alive(&self) -> bool {
        self.command()
            .args(["has-session", "-t", "top"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

#[tokio::test]
async fn top_shows_drivers_values_link_and_system_at_80x24_and_quits() -> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/#").await?;
    let config = rig.dir.path().join("gateway.toml");
    // Plaintext queue: values are shown (an encrypted queue with the status
    // file on disk withholds them; see the second half).
    let gateway = sim_scale_config(rig.dir.path(), &rig.pki, rig.port, 200)?.set(
        "storage",
        "encryption",
        "none",
    );
    std::fs::write(&config, gateway.render())?;
    let mut ferrule =
        ferrule_tests::start_ferrule(rig.dir.path(), &["run", &config.to_string_lossy()])?;
    let bin = ferrule_tests::ferrule_bin()?;
    let tmux = Tmux::start(
        rig.dir.path(),
        &format!("{} top {}", bin.display(), config.display()),
    )?;

    // View 1: the driver, polling, its device, the gateway live.
    let screen = tmux
        .wait_for(
            &["gw-test", "live", "sim-1", "polls/s"],
            Duration::from_secs(60),
        )
        .await?;
    eprintln!("view 1:\n{screen}");
    assert!(
        screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80),
        "fits 80x24:\n{screen}"
    );
    // A poll rate shows once two status files were read (5/s at 200 ms).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let screen = tmux.screen()?;
        let row = screen
            .lines()
            .find(|l| l.contains("sim-1"))
            .unwrap_or_default()
            .to_string();
        let rate = row
            .trim_matches(|c: char| !c.is_alphanumeric())
            .split_whitespace()
            .nth(2)
            .and_then(|r| r.parse::<f64>().ok());
        if let Some(rate) = rate {
            assert!(rate > 0.0, "polls/s of a polling driver: {row:?}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no poll rate in {row:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // View 2: the last values, after the processor (renamed and in degF).
    tmux.keys("2")?;
    let screen = tmux
        .wait_for(
            &["temperature_f", "degF", "count", "good"],
            Duration::from_secs(10),
        )
        .await?;
    eprintln!("view 2:\n{screen}");

    // View 3: the broker link and the queue.
    tmux.keys("3")?;
    let screen = tmux
        .wait_for(
            &["connected", "queue", "entries", "delivered"],
            Duration::from_secs(10),
        )
        .await?;
    eprintln!("view 3:\n{screen}");
    assert!(!screen.contains("NOT connected"), "{screen}");

    // View 4: the process and the config.
    tmux.keys("4")?;
    let screen = tmux
        .wait_for(&["process", "resident", "config"], Duration::from_secs(10))
        .await?;
    eprintln!("view 4:\n{screen}");

    // The broker goes away: view 3 says so within a few refreshes.
    tmux.keys("3")?;
    let mut broker = rig.broker;
    broker.process.terminate(Duration::from_secs(10))?;
    let screen = tmux
        .wait_for(&["NOT connected", "last failure"], Duration::from_secs(30))
        .await?;
    eprintln!("view 3, broker stopped:\n{screen}");

    // The gateway stops: the header says so.
    ferrule.terminate(Duration::from_secs(30))?;
    tmux.wait_for(&["STOPPED"], Duration::from_secs(10)).await?;

    // q quits and gives the terminal back.
    tmux.keys("q")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        anyhow::ensure!(Instant::now() < deadline, "top did not quit on q");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn values_are_withheld_from_a_status_file_on_disk_when_the_queue_is_encrypted()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/#").await?;
    let config = rig.dir.path().join("gateway.toml");
    // The default: an encrypted queue, the status file in the data dir.
    let gateway = sim_scale_config(rig.dir.path(), &rig.pki, rig.port, 200)?;
    std::fs::write(&config, gateway.render())?;
    let mut ferrule =
        ferrule_tests::start_ferrule(rig.dir.path(), &["run", &config.to_string_lossy()])?;
    let status = rig.data_dir().join("status.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && text.contains("\"batches_queued\"")
            && !text.contains("\"batches_queued\":0")
        {
            break text;
        }
        anyhow::ensure!(Instant::now() < deadline, "no status file with a batch");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ferrule.terminate(Duration::from_secs(30))?;
    assert!(text.contains("values_withheld"), "{text}");
    assert!(
        !text.contains("temperature_f"),
        "no reading's channel or value in the file on disk: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text)?;
    assert!(
        v["values_withheld"]
            .as_str()
            .is_some_and(|w| w.contains("encrypted at rest")),
        "{v}"
    );
    assert!(v["last"][0]["batch"].is_null(), "{v}");
    Ok(())
}
