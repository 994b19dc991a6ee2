//! The group's committed offsets and the input's high watermarks, read about
//! once a second on a thread of its own: a read that waits on a dead broker
//! (up to 30 s) must hold up neither the drill's supervision of its instances
//! nor the clocks of its faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::kafka::{Connection, GroupAdmin, TopicReader};

pub(super) struct Sample {
    /// When the committed offsets were read.
    pub at: Instant,
    pub committed: BTreeMap<i32, i64>,
    pub high: BTreeMap<i32, i64>,
}

pub(super) struct Sampler {
    samples: Receiver<Sample>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    pub(super) fn start(
        conn: &Connection,
        group: &str,
        input: &str,
        partitions: i32,
    ) -> anyhow::Result<Sampler> {
        let admin = GroupAdmin::new(conn, group)?;
        let reader = TopicReader::new(conn, input)?;
        let (tx, samples) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (input, stopped) = (input.to_string(), stop.clone());
        let all: Vec<i32> = (0..partitions).collect();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let started = Instant::now();
                // A failed read (a broker busy or gone) is skipped.
                if let Ok(committed) = admin.committed_of(&input, &all) {
                    let at = Instant::now();
                    let high: Option<BTreeMap<i32, i64>> = all
                        .iter()
                        .map(|p| reader.watermarks(*p).ok().map(|(_, h)| (*p, h)))
                        .collect();
                    if let Some(high) = high
                        && tx
                            .send(Sample {
                                at,
                                committed,
                                high,
                            })
                            .is_err()
                    {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
        });
        Ok(Sampler { samples, stop })
    }

    /// The samples taken since the last call, oldest first.
    pub(super) fn take(&self) -> Vec<Sample> {
        self.samples.try_iter().collect()
    }
}

impl Drop for Sampler {
    /// The thread ends after its current read; nobody waits for it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
