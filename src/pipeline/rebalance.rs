//! Partitions assigned and revoked: librdkafka's callbacks hand the work to the
//! loop (see [`crate::kafka::RebalanceEvent`]) and wait for it.

use super::{PartitionState, Pipeline, Result, Snapshots};
use crate::kafka::RebalanceEvent;
use crate::observe::{PartitionsAssigned, PartitionsRevoked, emit};

impl Pipeline {
    pub(super) async fn on_rebalance(&mut self, ev: RebalanceEvent) -> Result<()> {
        match ev {
            RebalanceEvent::Revoked {
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
            RebalanceEvent::Assigned { partitions, epoch } => {
                tracing::info!(?partitions, epoch, "partitions assigned; restoring state");
                emit(PartitionsAssigned {
                    partitions: &partitions,
                });
                for p in &partitions {
                    self.partitions.insert(*p, PartitionState::new(epoch));
                }
                self.spawn_restore(partitions);
            }
        }
        Ok(())
    }
}
