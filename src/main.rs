//! The `tally` binary: argument parsing, logging, signals, exit codes. Errors end
//! here as `anyhow` with a message saying what failed and what to do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tally::aggregate::{Aggregate, Horizon};
use tally::config::{
    Cli, Command, CopyArgs, CreateTopicsArgs, GenerateArgs, InsightsArgs, LagArgs, ReplayArgs,
    RunArgs, StateArgs, VerifyArgs,
};
use tally::kafka::{self, MemberConfig};
use tally::pipeline::{Pipeline, PipelineConfig, PipelineError};
use tally::{failpoints, generate, insights, verify};
use tally_state::StateStore;

/// Exit status when another process holds our instance id.
const EXIT_FENCED: i32 = 3;
/// Exit status of `verify` when it finds violations.
const EXIT_VIOLATIONS: i32 = 4;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _failpoints = failpoints::setup();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let fenced = e
                .downcast_ref::<PipelineError>()
                .is_some_and(|p| matches!(p, PipelineError::Fenced { .. }));
            eprintln!("error: {e:#}");
            if fenced { EXIT_FENCED } else { 1 }
        }
    };
    // Exit without waiting for blocking threads (a poll in flight).
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(a) => run(a).await.map(|()| 0),
        Command::Generate(a) => generate_cmd(a).await.map(|()| 0),
        Command::Verify(a) => verify_cmd(a).await,
        Command::Insights(a) => insights_cmd(a).await.map(|()| 0),
        Command::State(a) => state_cmd(a).await.map(|()| 0),
        Command::Replay(a) => replay_cmd(a).await.map(|()| 0),
        Command::CreateTopics(a) => create_topics_cmd(a).await.map(|()| 0),
        Command::Lag(a) => lag_cmd(a).await,
        Command::Copy(a) => copy_cmd(a).await.map(|()| 0),
    }
}

/// Sets the flag on SIGINT or SIGTERM.
fn shutdown_flag() -> Arc<AtomicBool> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // Registered here, synchronously: a signal arriving before the task first
    // runs is still seen.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received; finishing the open transaction");
        f.store(true, Ordering::SeqCst);
    });
    flag
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let connection = a.kafka.connection();
    connection.validate()?;
    if a.session_timeout < Duration::from_secs(6) {
        bail!(
            "--session-timeout must be at least 6000 ms (brokers reject shorter sessions by default)"
        );
    }
    if a.instance_id.trim().is_empty() {
        bail!("--instance-id must not be empty");
    }
    if a.reset_state {
        let dir = a.state_dir.clone();
        blocking(move || StateStore::destroy(dir)).await?;
        tracing::info!(dir = %a.state_dir.display(), "local state deleted (--reset-state); it is rebuilt from Kafka");
    }
    let cfg = PipelineConfig {
        connection,
        process: a.process.config(&a.topics.input_topic),
        member: MemberConfig {
            group: a.group_id.clone(),
            instance_id: a.instance_id.clone(),
            topic: a.topics.input_topic.clone(),
            session_timeout: a.session_timeout,
            max_poll_interval: Duration::from_secs(300),
        },
        transactional_id: format!("{}-{}", a.transactional_id_prefix, a.instance_id),
        topics: a.topics.outputs(),
        commit_interval: a.commit_interval,
        max_batch_records: a.max_batch_records,
        horizon: a.horizon(),
        state_dir: a.state_dir.clone(),
        progress_interval: Duration::from_secs(a.progress_secs),
    };
    tracing::info!(group = %a.group_id, instance = %a.instance_id, input = %a.topics.input_topic, state_dir = %a.state_dir.display(), "starting");
    // Installed before start-up, so a SIGTERM while joining still ends cleanly.
    let shutdown = shutdown_flag();
    let pipeline = Pipeline::start(cfg).await?;
    pipeline.run(shutdown).await?;
    Ok(())
}

async fn generate_cmd(a: GenerateArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let stop = shutdown_flag();
    let start_time = a
        .start_time
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let topic = a.topic.clone();
    let sent = blocking(move || -> anyhow::Result<(u64, u64)> {
        let producer = kafka::PlainProducer::new(&conn)?;
        let mut g = generate::Generator::new(a.seed, start_time, a.invalid_ratio, a.huge);
        if a.rate > 0.0 {
            g = g.with_events_per_minute((a.rate * 60.0) as u64);
        }
        let started = Instant::now();
        let (mut n, mut bad) = (0u64, 0u64);
        while a.count.is_none_or(|c| n < c) && !stop.load(Ordering::SeqCst) {
            if a.rate > 0.0 {
                let due = Duration::from_secs_f64(n as f64 / a.rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(100)));
                    continue;
                }
            }
            let r = g.next_record();
            producer.send(&a.topic, Some(&r.key), r.value.as_deref(), &[])?;
            n += 1;
            bad += u64::from(r.malformed.is_some());
        }
        producer.flush()?;
        Ok((n, bad))
    })
    .await?;
    println!(
        "generated {} events ({} malformed) to {}",
        sent.0, sent.1, topic
    );
    Ok(())
}

async fn verify_cmd(a: VerifyArgs) -> anyhow::Result<i32> {
    let conn = a.kafka.connection();
    let cfg = a.process.config(&a.topics.input_topic);
    let (group, out, dlq) = (
        a.group_id.clone(),
        a.topics.output_topic.clone(),
        a.topics.dlq_topic.clone(),
    );
    let summary = blocking(move || verify::verify(&conn, &group, &cfg, &out, &dlq)).await?;
    let incomplete = a.complete && summary.unconsumed > 0;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    if summary.violations() > 0 || incomplete {
        eprintln!(
            "verify: FAILED ({} violations{})",
            summary.violations(),
            if incomplete {
                format!(", {} input records not consumed", summary.unconsumed)
            } else {
                String::new()
            }
        );
        return Ok(EXIT_VIOLATIONS);
    }
    eprintln!("verify: OK");
    Ok(0)
}

async fn insights_cmd(a: InsightsArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let (topic, input) = (a.insights_topic.clone(), a.input_topic.clone());
    let latest = blocking(move || -> anyhow::Result<insights::Latest> {
        let reader = kafka::TopicReader::new(&conn, &topic)?;
        let ranges: Vec<_> = reader
            .partitions()?
            .into_iter()
            .map(|p| (p, kafka::StartAt::Earliest, None))
            .collect();
        let mut latest = insights::Latest::default();
        reader.read(&ranges, |r| {
            if let Some(v) = &r.record.value {
                latest.offer(&input, v);
            }
        })?;
        Ok(latest)
    })
    .await?;
    let merged = latest.merged(Horizon::default());
    if a.json {
        let offsets: BTreeMap<i32, i64> = latest
            .by_partition
            .iter()
            .map(|(p, s)| (*p, s.next_offset))
            .collect();
        let out = serde_json::json!({
            "partitions": offsets,
            "aggregate": merged,
            "peak_minutes": merged.peak_minutes(a.top),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            insights::table(&merged, latest.by_partition.len(), a.top)
        );
    }
    Ok(())
}

async fn state_cmd(a: StateArgs) -> anyhow::Result<()> {
    let dir = a.state_dir.clone();
    if !dir.exists() {
        bail!("state directory {} does not exist", dir.display());
    }
    let listed = blocking(move || -> anyhow::Result<_> {
        let store = StateStore::open_read_only(&dir)?;
        Ok(store.list_all::<Aggregate>()?)
    })
    .await?;
    println!(
        "{:<20} {:<20} {:>9} {:>12} {:>10} {:>8} {:>8} {:>9}",
        "group", "topic", "partition", "next_offset", "processed", "dlq", "filtered", "bytes"
    );
    for l in &listed {
        let a = &l.checkpoint.state;
        println!(
            "{:<20} {:<20} {:>9} {:>12} {:>10} {:>8} {:>8} {:>9}",
            l.namespace.group,
            l.namespace.topic,
            l.checkpoint.partition,
            l.checkpoint.next_offset,
            a.processed,
            a.dead_lettered,
            a.filtered,
            l.size_bytes
        );
    }
    println!("{} checkpoints in {}", listed.len(), a.state_dir.display());
    Ok(())
}

async fn replay_cmd(a: ReplayArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let target = if a.to == "earliest" {
        None
    } else {
        Some(
            chrono::DateTime::parse_from_rfc3339(&a.to)
                .with_context(|| {
                    format!("--to {:?} is neither `earliest` nor an RFC 3339 time", a.to)
                })?
                .timestamp_millis(),
        )
    };
    let (group, topic) = (a.group.clone(), a.input_topic.clone());
    let (before, after) = blocking(move || -> anyhow::Result<_> {
        let admin = kafka::GroupAdmin::new(&conn, &group)?;
        let g = admin.describe()?;
        if !g.members.is_empty() {
            bail!(
                "group {group} has {} active member(s) ({}); stop every `tally run` of the group first",
                g.members.len(),
                g.members.join(", ")
            );
        }
        let before = admin.committed(&topic)?;
        let after = match target {
            None => {
                let mut m = BTreeMap::new();
                for p in admin.partitions(&topic)? {
                    m.insert(p, admin.watermarks(&topic, p)?.0);
                }
                m
            }
            Some(ms) => admin.offsets_for_time(&topic, ms)?,
        };
        admin.commit(&topic, &after)?;
        Ok((before, after))
    })
    .await?;
    println!(
        "group {} topic {}: committed offsets reset",
        a.group, a.input_topic
    );
    for (p, o) in &after {
        println!(
            "  partition {p}: {} -> {o}",
            before.get(p).map_or("none".to_string(), |b| b.to_string())
        );
    }
    println!(
        "local state will be rebuilt: each instance's checkpoint is now ahead of the committed offset (K > C), \
         so on assignment tally discards it and rebuilds the partition's aggregates from the earliest offset. \
         Records from the new offsets on are processed (and written) again."
    );
    Ok(())
}

async fn create_topics_cmd(a: CreateTopicsArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let specs = kafka::pipeline_topic_specs(
        &a.topics.input_topic,
        &a.topics.outputs(),
        a.partitions,
        a.replication,
    );
    for (name, created) in kafka::create_topics(&conn, &specs).await? {
        println!("{name}: {}", if created { "created" } else { "exists" });
    }
    Ok(())
}

async fn copy_cmd(a: CopyArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let n = blocking(move || {
        kafka::copy_at_least_once(
            &conn,
            &a.group_id,
            &a.topics.input_topic,
            &a.topics.output_topic,
            a.count,
        )
    })
    .await?;
    println!("copied {n} records");
    Ok(())
}

/// Partition, committed offset (if any), end offset.
type LagRow = (i32, Option<i64>, i64);

async fn lag_cmd(a: LagArgs) -> anyhow::Result<i32> {
    let conn = a.kafka.connection();
    let (group, topic) = (a.group_id.clone(), a.input_topic.clone());
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let rows = blocking(move || -> anyhow::Result<Option<Vec<LagRow>>> {
        let admin = kafka::GroupAdmin::new(&conn, &group)?;
        loop {
            let committed = admin.committed(&topic)?;
            if a.wait_for
                .is_none_or(|n| committed.values().sum::<i64>() >= n)
            {
                let mut rows = Vec::new();
                for p in admin.partitions(&topic)? {
                    rows.push((
                        p,
                        committed.get(&p).copied(),
                        admin.watermarks(&topic, p)?.1,
                    ));
                }
                return Ok(Some(rows));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?;
    let Some(rows) = rows else {
        eprintln!(
            "lag: the group did not reach {:?} committed records within {} s",
            a.wait_for, a.timeout
        );
        return Ok(1);
    };
    println!(
        "{:>9} {:>12} {:>12} {:>10}",
        "partition", "committed", "end", "lag"
    );
    let mut total = 0;
    for (p, c, end) in rows {
        let lag = end - c.unwrap_or(0);
        total += lag;
        println!(
            "{p:>9} {:>12} {end:>12} {lag:>10}",
            c.map_or("-".to_string(), |c| c.to_string())
        );
    }
    println!("total lag {total}");
    Ok(0)
}
