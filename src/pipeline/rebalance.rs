//! Partitions assigned and revoked: librdkafka's callbacks hand the work to the
//! loop (see [`crate::kafka::Rebalance`]) and wait for it; and a consumer
//! fenced by its own rejoin replaced by a new member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    PartitionState, Pipeline, PipelineError, Result, Rewind, Snapshots, Txn, blocking, drop_later,
    fenced, txn_fatal,
};
use crate::kafka::Rebalance;
use crate::kafka::{GroupConsumer, TxnError};
use crate::observe::{PartitionsAssigned, PartitionsRevoked, emit};

/// A consumer fenced more often than this within [`REJOIN_WINDOW`] is taken as
/// fenced for good: two processes sharing an instance id would otherwise fence
/// each other's consumers in turn.
const MAX_REJOINS: usize = 3;
const REJOIN_WINDOW: Duration = Duration::from_secs(600);

/// Fencing probes sent at most before a producer never shown unfenced is taken
/// as fenced, the later ones only within `transaction.timeout.ms` of the first.
const PROBE_ATTEMPTS: u32 = 3;

impl Pipeline {
    /// The consumer was fenced (`FENCED_INSTANCE_ID`). Another process that took
    /// our instance id called `init_transactions` on our transactional.id before
    /// it joined, so our producer is then fenced too: the probe asks the broker,
    /// and a fenced producer stops this process as before. A valid producer means
    /// the consumer was fenced by its own rejoin (librdkafka #3437: a static
    /// member whose session timed out while the broker was unreachable), so a new
    /// consumer rejoins under the same instance id and the partitions are
    /// recovered as on any assignment. Nothing of the fenced consumer's partitions
    /// is kept: the open transaction is aborted before anything else.
    pub(super) async fn rejoin(&mut self, detail: String) -> Result<()> {
        let now = Instant::now();
        self.rejoins
            .retain(|t| now.duration_since(*t) < REJOIN_WINDOW);
        if self.rejoins.len() >= MAX_REJOINS {
            return Err(fenced(
                &self.cfg,
                format!(
                    "{detail} (the consumer was fenced {MAX_REJOINS} times in {} s)",
                    REJOIN_WINDOW.as_secs()
                ),
            ));
        }
        self.rejoins.push(now);
        tracing::warn!(error = %detail, "consumer fenced; asking the broker whether the transactional producer is fenced too");
        let open = matches!(self.txn, Txn::Open { .. });
        let started = Instant::now();
        let first = self.probe(open).await;
        if open {
            // The probe aborted it. The records come again; failures of theirs
            // reported meanwhile go to the poison rule. No rewind: every
            // partition is dropped below, or the process stops.
            self.aborted(Rewind::Dropped).await?;
        }
        // A probe lost while its transaction aborted cleanly proves nothing
        // (the first request after a long pause can fail so): asked again in a
        // new transaction, while the first probe's transaction could still have
        // been open.
        let mut probed = first;
        let mut attempts = 1;
        while let ((Ok(Some(why)), _), true) = (
            &probed,
            attempts < PROBE_ATTEMPTS && started.elapsed() < self.producer.transaction_timeout(),
        ) {
            tracing::warn!(attempt = attempts, error = %why, "fencing probe not delivered, its transaction aborted cleanly; probing again");
            attempts += 1;
            probed = self.probe(false).await;
        }
        match probed {
            (Ok(None), _) => {}
            // Fails closed: never shown unfenced.
            (Ok(Some(why)), _) => {
                return Err(fenced(
                    &self.cfg,
                    format!(
                        "{detail}; the transactional producer could not be shown unfenced \
                         ({attempts} probes; the last: {why})"
                    ),
                ));
            }
            // The coordinator may have timed the probe's transaction out: then no
            // other process holds the id and only this producer needs replacing.
            (Err(TxnError::Fenced(why)), open_for) => match self.timed_out(open_for, &why) {
                Some(why) => self.renew_producer(&why).await?,
                None => return Err(fenced(&self.cfg, format!("{detail}; {why}"))),
            },
            (Err(e), _) => return Err(txn_fatal(&self.cfg, e)),
        }
        let lost: Vec<i32> = self.partitions.keys().copied().collect();
        self.partitions.clear();
        emit(PartitionsRevoked { partitions: &lost });
        let (consumer, rebalances) = GroupConsumer::new(&self.cfg.connection, &self.cfg.member)?;
        consumer.subscribe()?;
        // The old receiver goes first: a callback of the old consumer's close then
        // finds nobody to wait for.
        drop(std::mem::replace(&mut self.rebalances, rebalances));
        let old = std::mem::replace(&mut self.consumer, Arc::new(consumer));
        drop_later(old);
        tracing::warn!(partitions = ?lost, "the producer is not fenced: the consumer was fenced by its own rejoin; rejoined the group with a new consumer");
        Ok(())
    }

    /// One fencing probe (see [`crate::kafka::TxnProducer::probe_fencing`]), in
    /// the open transaction if `open`, else in a new one; with how long the
    /// probe's transaction had been open when the probe was sent, the age that
    /// tells a transaction the coordinator timed out from another process. Not
    /// counted: the wait for the probe itself, so a probe slow to settle is
    /// never read as a timed-out transaction (which would replace the producer
    /// and fence the process that really holds the id); fenced then, it exits.
    async fn probe(
        &mut self,
        open: bool,
    ) -> (
        std::result::Result<Option<String>, TxnError>,
        Option<Duration>,
    ) {
        let status = &crate::observe::telemetry().status;
        status.beat();
        let stage = std::mem::replace(
            &mut self.stage,
            "probing whether the transactional producer is fenced",
        );
        let since = match self.txn {
            Txn::Open { since, .. } if open => since,
            _ => Instant::now(),
        };
        let age = since.elapsed();
        let p = self.producer.clone();
        let probed =
            blocking(move || p.probe_fencing(open, &|| crate::observe::telemetry().status.beat()))
                .await;
        status.beat();
        self.stage = stage;
        (probed, Some(age))
    }

    /// Stops before a partition whose snapshots would go to an insights partition
    /// that does not exist: the input gained partitions at runtime (librdkafka
    /// then rebalances) and the insights topic did not. The count read at start
    /// is read again before refusing, in case the operator added the insights
    /// partitions too; a cluster that cannot say now (a broker restarting) only
    /// delays the refusal: the partitions are restored and every snapshot of
    /// theirs aborts its transaction until the next assignment asks again.
    async fn check_insights_partitions(&mut self, assigned: &[i32]) -> Result<()> {
        if beyond(assigned, self.insights_partitions).is_empty() {
            return Ok(());
        }
        let (c, topic) = (self.consumer.clone(), self.cfg.topics.insights.clone());
        // The wait on the cluster beats the liveness clock; the call ends by
        // its own timeout.
        let asked = super::cycle::beating(
            crate::kafka::CALL_TIMEOUT + Duration::from_secs(5),
            blocking(move || c.topic_partitions(&topic)),
        )
        .await;
        match asked {
            Some(Ok(partitions)) => self.insights_partitions = partitions.len(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, insights = %self.cfg.topics.insights, "cannot read the insights topic's partitions; asking again at the next assignment");
                return Ok(());
            }
            None => return Ok(()),
        }
        let partitions = beyond(assigned, self.insights_partitions);
        match partitions.iter().max().copied() {
            None => Ok(()),
            Some(max) => Err(PipelineError::InputGrew {
                input: self.cfg.process.input_topic.clone(),
                insights: self.cfg.topics.insights.clone(),
                partitions,
                insights_partitions: self.insights_partitions,
                needed: max + 1,
            }),
        }
    }

    pub(super) async fn on_rebalance(&mut self, ev: Rebalance) -> Result<()> {
        match ev {
            Rebalance::Revoked {
                partitions,
                lost,
                done,
            } => {
                if lost {
                    tracing::warn!(
                        ?partitions,
                        "partitions lost; aborting the open transaction"
                    );
                    self.abort_and_rewind("partitions lost").await?;
                } else {
                    // Forced: the next owner restores from these snapshots.
                    self.close_cycle(Snapshots::All).await?;
                }
                for p in &partitions {
                    self.partitions.remove(p);
                }
                emit(PartitionsRevoked {
                    partitions: &partitions,
                });
                tracing::info!(?partitions, lost, "partitions revoked");
                let _ = done.send(());
            }
            Rebalance::Assigned { partitions, rewind } => {
                tracing::info!(?partitions, %rewind, "partitions assigned; restoring state");
                self.check_insights_partitions(&partitions).await?;
                emit(PartitionsAssigned {
                    partitions: &partitions,
                });
                for p in &partitions {
                    self.partitions.insert(*p, PartitionState::new(rewind));
                }
                self.spawn_restore(partitions);
            }
        }
        Ok(())
    }
}

/// The assigned partitions that have no insights partition of the same number.
fn beyond(assigned: &[i32], insights_partitions: usize) -> Vec<i32> {
    assigned
        .iter()
        .copied()
        .filter(|p| *p as usize >= insights_partitions)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_past_the_insights_topic_are_named() {
        assert_eq!(beyond(&[0, 1, 2], 3), Vec::<i32>::new());
        assert_eq!(beyond(&[1, 3, 4], 3), vec![3, 4]);
        // Not read yet: everything is checked against the broker.
        assert_eq!(beyond(&[0], 0), vec![0]);
    }
}
