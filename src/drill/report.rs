//! What the drill found, as `summary.json` and as the text it prints.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Fault;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub events: u64,
    pub malformed: u64,
    pub faults: BTreeMap<Fault, u32>,
    pub restarts: u32,
    pub unexpected_exits: Vec<String>,
    pub zombie_outcomes: Vec<String>,
    /// Times the group was not ready within the drill's limit after a fault.
    pub stalls: Vec<String>,
    pub duplicates: u64,
    pub losses: u64,
    pub mismatched: u64,
    pub stray: u64,
    pub aggregate_mismatches: Vec<String>,
    /// Times the input was trimmed below the committed offsets.
    pub retention_trims: u32,
    pub partitions_checked: u32,
    pub checkpoints_checked: u32,
    /// Latest snapshots not at the committed offset or not equal to the
    /// partition's recount; checkpoints ahead of Kafka or differing from it.
    pub snapshot_mismatches: Vec<String>,
    pub drain_secs: f64,
    /// Peak resident set (VmHWM) per instance, MiB, over all its restarts.
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub verify: String,
    /// Per fault kind (crash points by point), how often it was shown to
    /// strike: a crash point's marker and SIGABRT, a log start that moved, a
    /// zombie's new assignment or its fenced exit.
    pub struck: BTreeMap<String, u32>,
    /// Faults applied without evidence that they struck.
    pub not_struck: Vec<String>,
    /// Snapshots in the insights topic checked against the recount.
    pub snapshots_checked: u32,
    /// Committed offsets seen to move backwards while the drill sampled them.
    pub offset_regressions: Vec<String>,
    /// Longest a partition with input waiting went without a commit.
    pub longest_without_commit_secs: f64,
    /// How long a partition may go without a commit while input waits.
    pub stall_bound_secs: u64,
    /// The drill's own premises that failed (offsets no longer name the
    /// generator's records): nothing else can be judged then.
    pub harness_errors: Vec<String>,
    /// Records the generator's producer wrote to the input twice (each is an
    /// input record of its own, to be processed once).
    pub input_rewritten: u64,
    /// Valid records dead-lettered while producing (poison, unproducible):
    /// none may be, in a drill.
    pub runtime_dead_letters: u64,
    /// The fault planted in tally, if any: the drill must then fail.
    pub planted: Option<super::Plant>,
    /// Per fault kind: the time from each strike until every input record
    /// written before it was committed.
    pub recovery: BTreeMap<String, Recovery>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Recovery {
    pub count: usize,
    pub median_secs: f64,
    pub max_secs: f64,
}

impl Recovery {
    pub fn of(times: &[std::time::Duration]) -> Recovery {
        let mut secs: Vec<f64> = times.iter().map(|d| d.as_secs_f64()).collect();
        secs.sort_by(f64::total_cmp);
        let median = match secs.len() {
            0 => 0.0,
            n if n % 2 == 1 => secs[n / 2],
            n => (secs[n / 2 - 1] + secs[n / 2]) / 2.0,
        };
        Recovery {
            count: secs.len(),
            median_secs: median,
            max_secs: secs.last().copied().unwrap_or(0.0),
        }
    }
}

impl Report {
    pub(super) fn passed(&self) -> bool {
        self.duplicates == 0
            && self.losses == 0
            && self.mismatched == 0
            && self.stray == 0
            && self.aggregate_mismatches.is_empty()
            && self.snapshot_mismatches.is_empty()
            && self.unexpected_exits.is_empty()
            && self.stalls.is_empty()
            && self.offset_regressions.is_empty()
            && self.not_struck.is_empty()
            && self.runtime_dead_letters == 0
            && self.harness_errors.is_empty()
    }

    /// Prints the summary a person reads.
    pub fn print(&self) {
        println!("drill summary (seed {})", self.seed);
        println!("  events {} ({} malformed)", self.events, self.malformed);
        println!(
            "  faults: {} ({})",
            self.faults.values().sum::<u32>(),
            self.faults
                .iter()
                .map(|(k, v)| format!("{k:?}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  struck: {}",
            self.struck
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for m in &self.not_struck {
            println!("    not struck: {m}");
        }
        for m in &self.harness_errors {
            println!("    drill premise failed: {m}");
        }
        if let Some(p) = self.planted {
            println!("  planted fault: {p:?} (the drill must fail)");
        }
        println!(
            "  input records the generator's producer wrote twice: {}",
            self.input_rewritten
        );
        println!("  restarts {}", self.restarts);
        for z in &self.zombie_outcomes {
            println!("  zombie {z}");
        }
        println!(
            "  duplicates {}, losses {}, mismatched {}, stray {}",
            self.duplicates, self.losses, self.mismatched, self.stray
        );
        println!(
            "  runtime dead letters {} (must be 0)",
            self.runtime_dead_letters
        );
        println!("  aggregate mismatches {}", self.aggregate_mismatches.len());
        for m in &self.aggregate_mismatches {
            println!("    {m}");
        }
        println!(
            "  retention trims {}; snapshot/checkpoint mismatches {} ({} snapshots, {} partitions' latest, {} checkpoints checked)",
            self.retention_trims,
            self.snapshot_mismatches.len(),
            self.snapshots_checked,
            self.partitions_checked,
            self.checkpoints_checked
        );
        for m in &self.snapshot_mismatches {
            println!("    {m}");
        }
        println!("  unexpected exits {}", self.unexpected_exits.len());
        for m in &self.unexpected_exits {
            println!("    {m}");
        }
        println!(
            "  stalls {} (bound {} s; longest without a commit while input waited {:.1} s)",
            self.stalls.len(),
            self.stall_bound_secs,
            self.longest_without_commit_secs
        );
        for m in &self.stalls {
            println!("    {m}");
        }
        println!(
            "  committed offsets moved backwards {}",
            self.offset_regressions.len()
        );
        for m in &self.offset_regressions {
            println!("    {m}");
        }
        println!("  recovery, from the strike until the input written before it was committed:");
        for (kind, r) in &self.recovery {
            println!(
                "    {kind}: {} times, median {:.1} s, max {:.1} s",
                r.count, r.median_secs, r.max_secs
            );
        }
        println!("  time to drain {:.1} s", self.drain_secs);
        println!(
            "  peak RSS (VmHWM): {}",
            self.peak_rss_mib
                .iter()
                .map(|(id, mib)| format!("{id}={mib:.1} MiB"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        print!(
            "{}",
            self.verify
                .lines()
                .map(|l| format!("  verify: {}\n", l.trim()))
                .collect::<String>()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Recovery;
    use std::time::Duration;

    #[test]
    fn recovery_median_and_max() {
        let s = Duration::from_secs;
        assert_eq!(
            Recovery::of(&[s(9), s(1), s(4)]),
            Recovery {
                count: 3,
                median_secs: 4.0,
                max_secs: 9.0
            }
        );
        assert_eq!(Recovery::of(&[s(2), s(6)]).median_secs, 4.0);
        assert_eq!(Recovery::of(&[]), Recovery::default());
    }
}
