//! ferrule on a clustered broker of another make: Debian's RabbitMQ 3.10
//! (`rabbitmq_mqtt`, MQTT 3.1.1 over TLS, client certificates as the login)
//! as three nodes on loopback. The gateway lists every node in `mqtt.hosts`;
//! the node it is connected to is killed; it carries on through another
//! node, and a consumer on a third sees every sequence number. What the
//! broker guide (docs/brokers.md) says of RabbitMQ's retained messages,
//! wills and topic names is checked here too, so it stays true.

use std::time::{Duration, Instant};

use ferrule_tests::rabbit::{RabbitCluster, TlsPaths};
use ferrule_tests::{Pki, Received, SeqLog, Subscriber, queue_stats, start_ferrule, tempdir};

use crate::common::sim_config;

/// Status payloads (`online` / `offline`) among `messages`.
fn statuses(messages: &[Received]) -> Vec<String> {
    (messages.iter())
        .filter(|m| m.topic.ends_with("/status"))
        .map(Received::text)
        .collect()
}

/// Node 2, then node 1, as `mqtt.hosts` (node 3 is `mqtt.port`).
fn hosts(ports: &[u16]) -> toml::Value {
    toml::Value::Array(vec![
        format!("127.0.0.1:{}", ports[1]).into(),
        format!("127.0.0.1:{}", ports[0]).into(),
    ])
}

/// A subscriber on a node of a cluster that has just changed: RabbitMQ
/// registers client ids cluster-wide, and refuses connections while that
/// registry elects a new leader after a node comes back.
async fn connect(pki: &Pki, port: u16, filter: &str) -> anyhow::Result<Subscriber> {
    let mut tries = 0;
    loop {
        match Subscriber::connect(pki, port, filter).await {
            Ok(sub) => return Ok(sub),
            Err(e) if tries < 10 => {
                eprintln!("subscriber on {port}: {e}; trying again");
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every message that arrives at `sub` within `span`.
async fn collect(sub: &mut Subscriber, span: Duration) -> Vec<Received> {
    let until = Instant::now() + span;
    let mut got = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, sub.messages.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_rabbitmq_cluster_the_gateway_moves_to_another_node_when_its_node_dies_and_loses_nothing()
-> anyhow::Result<()> {
    let dir = tempdir()?;
    let d = dir.path().to_path_buf();
    let pki = Pki::new(&d)?;
    let cluster = {
        let (d, tls) = (d.clone(), TlsPaths::of(&pki));
        tokio::task::spawn_blocking(move || RabbitCluster::start_with(&d, &tls, 3, &[])).await??
    };
    let ports = cluster.ports();

    // The consumer keeps a session on node 1, which stays up: what is
    // routed to it while it reconnects waits in its queue there.
    let mut consumer =
        Subscriber::connect_persistent(&pki, ports[0], "ferrule/gw-test/#", "cluster-consumer")
            .await?;
    // The gateway starts on node 3, then lists node 2 and node 1. It keeps
    // its session (`clean_session = false`): with the cluster's
    // `mqtt.durable_queue_type = quorum`, the queue behind its command
    // subscription is replicated, so another node can take the session
    // over. A clean session's subscription queue would stay on the dead
    // node, and RabbitMQ 3.10 refuses the client id everywhere until that
    // node is back (docs/brokers.md).
    let gateway = sim_config(&d.join("data"), &pki, ports[2], 100, 2, "")?
        .set("mqtt", "clean_session", false)
        .set("mqtt", "hosts", hosts(&ports));
    let config = d.join("gateway.toml");
    std::fs::write(&config, gateway.render())?;
    let ferrule = start_ferrule(&d, &["run", "gateway.toml"])?;
    // A second gateway on node 3 with a clean session, as operators
    // coming from mosquitto would set it up: it cannot carry on while node
    // 3 is down, says why, and loses nothing.
    let mut clean_consumer = Subscriber::connect_persistent(
        &pki,
        ports[0],
        "ferrule/gw-clean/data/#",
        "cluster-consumer-2",
    )
    .await?;
    let clean = sim_config(&d.join("data-clean"), &pki, ports[2], 100, 2, "")?
        .set("gateway", "id", "gw-clean")
        .set("mqtt", "hosts", hosts(&ports));
    let clean_config = d.join("gateway-clean.toml");
    std::fs::write(&clean_config, clean.render())?;
    let clean_ferrule = start_ferrule(&d, &["run", "gateway-clean.toml"])?;
    let mut clean_seqs = SeqLog::default();
    clean_seqs
        .wait_for_all(&mut clean_consumer, 1, 10, Duration::from_secs(60))
        .await?;

    let mut seqs = SeqLog::default();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seqs.missing(1, 20).is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no readings through node 3 within 60 s; gateway log:\n{}",
            ferrule.log_text()
        );
        let m = consumer.next(Duration::from_secs(60), "readings").await?;
        seqs.push(&m)?;
        seen.push(m);
    }

    // Node 3 dies with the gateway's connection (kill -9 of the whole node).
    let mut cluster = cluster;
    cluster.kill(2);
    let killed_at = Instant::now();
    let on_node_2 = format!(":{}", ports[1]);
    while !(ferrule.log_text().lines())
        .any(|l| l.contains("mqtt connected") && l.contains(&on_node_2))
    {
        anyhow::ensure!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the gateway never connected to node 2; its log:\n{}",
            ferrule.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = killed_at.elapsed();
    clean_ferrule
        .wait_for_log("mqtt.durable_queue_type = quorum", Duration::from_secs(60))
        .await?;
    let after = collect(&mut consumer, Duration::from_secs(3)).await;
    for m in &after {
        seqs.push(m)?;
    }
    seen.extend(after);
    let before = seqs.max();

    // Node 3 comes back and rejoins; the gateway stays where it is.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(2)?;
        anyhow::Ok(cluster)
    })
    .await??;
    let stats = queue_stats(&d, &config)?;
    let last = stats["next_seq"].as_u64().unwrap_or(1) - 1;
    anyhow::ensure!(
        last > before + 10,
        "the gateway published little after the failover: seq {before} then {last}"
    );
    seqs.wait_for_all(&mut consumer, 1, last, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; gateway log:\n{}", ferrule.log_text()))?;
    // With node 3 back, the clean-session gateway delivers its backlog.
    let clean_last = queue_stats(&d, &clean_config)?["next_seq"]
        .as_u64()
        .unwrap_or(1)
        - 1;
    clean_seqs
        .wait_for_all(&mut clean_consumer, 1, clean_last, Duration::from_secs(90))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; clean-session gateway's log:\n{}",
                link_lines(&clean_ferrule.log_text())
            )
        })?;

    // A command from the consumer's node reaches the gateway on its new
    // node through the session it took over, and its result comes back.
    consumer
        .client
        .publish(
            "ferrule/gw-test/cmd/sim-1/write",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"id":"after-failover","channel":"c0","value":5}"#.to_vec(),
        )
        .await?;
    loop {
        let m = consumer
            .next(Duration::from_secs(30), "the command's result")
            .await?;
        if m.topic == "ferrule/gw-test/cmd/sim-1/result" {
            anyhow::ensure!(
                m.json()?["id"] == "after-failover",
                "result of another command: {}",
                m.text()
            );
            break;
        }
    }

    // Status: `online` (retained) at each connection. Node 3 died with the
    // gateway's session, will included, so no `offline` was published.
    let statuses = statuses(&seen);
    if statuses.len() != 2 {
        let log = cluster.nodes[1].log_text();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("error") || l.contains("warning"))
            .collect();
        eprintln!(
            "node 2's errors:\n{}",
            errors[errors.len().saturating_sub(30)..].join("\n")
        );
    }
    anyhow::ensure!(
        statuses == ["online", "online"],
        "status messages at the consumer: {statuses:?} (expected online on node 3, then online again on node 2); the gateway's link:\n{}",
        link_lines(&ferrule.log_text())
    );
    // Retained messages stay on the node they were published to, and are
    // given only to subscriptions without wildcards.
    let exact = "ferrule/gw-test/status";
    let mut on_node_2 = connect(&pki, ports[1], exact).await?;
    let retained = on_node_2
        .next(Duration::from_secs(10), "the retained status on node 2")
        .await?;
    anyhow::ensure!(retained.retain && retained.text() == "online");
    let mut on_node_1 = connect(&pki, ports[0], exact).await?;
    let elsewhere = collect(&mut on_node_1, Duration::from_secs(2)).await;
    anyhow::ensure!(
        elsewhere.is_empty(),
        "RabbitMQ 3.10 keeps retained messages per node, yet node 1 gave {} (docs/brokers.md says otherwise)",
        elsewhere.len()
    );
    let mut wildcard = connect(&pki, ports[1], "ferrule/gw-test/+").await?;
    let via_wildcard = collect(&mut wildcard, Duration::from_secs(2)).await;
    anyhow::ensure!(
        statuses_retained(&via_wildcard) == 0,
        "RabbitMQ 3.10 gives retained messages only to exact subscriptions, yet a wildcard got one"
    );
    eprintln!(
        "rabbitmq cluster: on node 2 {failover:?} after node 3 died; seq 1..={last} all seen ({} duplicates); node 3 back in the cluster: {}",
        seqs.duplicates(),
        cluster
            .ctl(0, &["cluster_status", "--formatter", "json"])?
            .contains(&cluster.nodes[2].name)
    );
    drop(ferrule);
    Ok(())
}

fn statuses_retained(messages: &[Received]) -> usize {
    messages.iter().filter(|m| m.retain).count()
}

/// The gateway's log lines about its broker link.
fn link_lines(log: &str) -> String {
    (log.lines())
        .filter(|l| l.contains("mqtt") || l.contains("broker"))
        .collect::<Vec<_>>()
        .join("\n")
}
