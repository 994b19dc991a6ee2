//! Named crash and error points for tests, switched on with the `FAILPOINTS`
//! environment variable (`name=return;other=return`, format of the `fail` crate).
//! Without the `failpoints` cargo feature (off by default; the test command and
//! the drill turn it on) they compile to nothing, and a binary started with
//! `FAILPOINTS` set refuses to run rather than silently ignore them.
//!
//! Points: `after-produce`, `before-commit`, `after-commit-before-checkpoint`
//! (crashes: the process aborts with no cleanup and no LeaveGroup, like `kill -9`)
//! `commit-error` (the commit fails with an abortable error), `commit-fatal`
//! (it fails as if the producer hit a fatal, non-fencing error), `queue-full`
//! (the producer's local queue refuses every record), `abort-during-poll` (the
//! open transaction is aborted and rewound while a polled batch is in flight),
//! `stop-before-commit` (the process sends itself SIGSTOP right before the
//! commit, after every check of the loop, as a pause of the process may hit it),
//! `stop-before-send-offsets` (the same, right before the offsets are sent to
//! the transaction, so a test can kill the group coordinator's broker first),
//! `send-offsets-hang` (use `sleep(ms)`: sending the offsets takes that long,
//! ignoring its timeout, as librdkafka's call can),
//! `commit-returns-late` (use `sleep(ms)`: the transaction committed, but the
//! call returns that much later),
//! `hold-commits` (commits are held as after a pause; evaluated once a batch is
//! in the open transaction, before the cycle may close) and
//! `shutdown-before-commit` (use `sleep(ms)`: delays the shutdown's commit);
//! `before-init-transactions` (use `sleep(ms)`: start-up waits that long after
//! logging "initialising transactions", so a test can stop the broker first);
//! `restore-hold` (with `sleep(ms)`: a partition's restore waits that long before
//! it starts, so tests can watch `/readyz` say why the instance is not ready).
//! Restores: `restore-delay-<partition>` (use `sleep(ms)`: that partition's
//! restore stalls after reading the committed offset, so a newer restore can
//! overtake it), `restore-transient` (a restore attempt fails with a transient
//! error) and `seek-not-ready` (a seek fails with `__STATE`, as before
//! librdkafka started the partition's fetcher).
//! `topic-limits-unreadable` (the output topics' `max.message.bytes` cannot be
//! read: the fallback flags apply, so the broker can be made to refuse a record).
//! `consumer-fenced` (the next poll reports the consumer fenced by its own
//! rejoin, with a transaction open) and `probe-undelivered` (a fencing probe is
//! taken as not delivered, though its transaction still aborts cleanly).
//! Planted faults, wrong on purpose, to show that the drill and `verify` catch
//! them: `plant-loss` (a record's output is not sent, yet its offset commits),
//! `plant-duplicate` (an output is sent twice), `plant-wrong-snapshot` (a
//! snapshot counts one processed record too many; the next is right again) and
//! `plant-checkpoint-ahead` (with `return(P)`: partition P's checkpoints are
//! written one offset past what Kafka committed).

/// Whether `FAILPOINTS` was set: without it the points cost one atomic load,
/// not a lock of the fail registry on every record.
#[cfg(feature = "failpoints")]
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads `FAILPOINTS`; keep the guard alive for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    std::env::var_os("FAILPOINTS").map(|points| {
        // Some points make tally wrong on purpose (`plant-*`): an operator who
        // set this by accident must see it in the first lines of the log.
        tracing::error!(
            failpoints = %points.to_string_lossy(),
            "FAILPOINTS is set: test failpoints are armed; never run production like this"
        );
        ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
        fail::FailScenario::setup()
    })
}

#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    // A test or drill that arms crash points against a build without them
    // would pass or fail for the wrong reason: say so and stop.
    if std::env::var_os("FAILPOINTS").is_some() {
        eprintln!(
            "error: FAILPOINTS is set, but this tally was built without the `failpoints` \
             feature; build it with `cargo build --features failpoints` (scripts/test.sh and \
             scripts/drill.sh do), or unset FAILPOINTS"
        );
        std::process::exit(2);
    }
    None
}

/// Aborts the process when `name` is on.
pub fn crash(name: &str) {
    if error(name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// True when the point `name` is on.
#[cfg(feature = "failpoints")]
pub fn error(name: &str) -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed) && fail::eval(name, |_| ()).is_some()
}

#[cfg(not(feature = "failpoints"))]
pub fn error(_name: &str) -> bool {
    false
}

/// The value of the point `name` when it is on with `return(value)`.
#[cfg(feature = "failpoints")]
pub fn value(name: &str) -> Option<String> {
    if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    fail::eval(name, |v| v).flatten()
}

#[cfg(not(feature = "failpoints"))]
pub fn value(_name: &str) -> Option<String> {
    None
}

/// Stops the whole process (SIGSTOP, as a VM pause or `kill -STOP` would) when
/// `name` is on; it runs on after a SIGCONT.
pub fn stop(name: &str) {
    if error(name) {
        eprintln!("failpoint {name}: stopping the process");
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &std::process::id().to_string()])
            .status();
    }
}
