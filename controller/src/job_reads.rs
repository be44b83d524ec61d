//! Reads of one job each, coalesced (`node_reads::Coalesced`): what a result is decided from
//! (also read by a heartbeat that finds its node's job running while the agent names none)
//! and what an acceptance is decided from, each read together with the others of its kind
//! waiting meanwhile.
//!
//! When a thousand nodes end a step together, each result and each acceptance read their
//! job before deciding: one statement each was one hand-off to the store's worker thread and
//! back, about 3,000 of the 7,000 statements of a 1,000-node run (BENCHMARKS.md); read
//! together, a burst costs a statement per batch.
//!
//! **Invariant:** as for node reads, a caller's answer comes from a statement that started
//! after its call: a coalesced read is never older than one of its own would have been, and
//! every decision is still applied with a compare-and-set on what it read.

use crate::node_reads::Coalesced;
use crate::store::{Store, StoreError};
use tollgate_domain::JobId;
use tollgate_domain::job::JobFacts;
use tollgate_domain::result::StepResult;

/// The job reads results and acceptances make, coalesced.
#[derive(Debug, Default)]
pub struct JobReads {
    results: Coalesced<(JobFacts, Vec<StepResult>), JobId>,
    acceptances: Coalesced<JobFacts, JobId>,
}

impl JobReads {
    /// [`Store::result_basis`], read together with the results' reads waiting meanwhile.
    pub async fn result_basis(
        &self,
        store: &Store,
        job: &JobId,
    ) -> Result<Option<(JobFacts, Vec<StepResult>)>, StoreError> {
        self.results
            .read(job, |jobs| async move { store.result_bases(&jobs).await })
            .await
    }

    /// [`Store::job_facts`], read together with the acceptances' reads waiting meanwhile.
    pub async fn acceptance_facts(
        &self,
        store: &Store,
        job: &JobId,
    ) -> Result<Option<JobFacts>, StoreError> {
        self.acceptances
            .read(job, |jobs| async move {
                let asked: Vec<&JobId> = jobs.iter().collect();
                Ok(store.job_facts_of_jobs(&asked).await?.into_iter().collect())
            })
            .await
    }
}
