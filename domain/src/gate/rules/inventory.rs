//! `inventory-matches-release`: every node ran the release under test (all its components,
//! or the listed ones), as its results observed the inventory.

use super::*;

#[derive(Default)]
pub(super) struct InventoryPart {
    n_results: usize,
    /// The item of a node that did not run the release.
    bad: Option<EvidenceItem>,
}

pub(super) struct Inventory {
    /// Components to check; empty for all.
    components: Vec<String>,
    flagged: BTreeSet<usize>,
    n_results: usize,
}

impl Inventory {
    pub(super) fn new(components: &[String]) -> Self {
        Self {
            components: components.to_vec(),
            flagged: BTreeSet::new(),
            n_results: 0,
        }
    }

    /// What differs from the release in the inventories job `j`'s results ran on, each
    /// difference once.
    fn problems(&self, ctx: &Ctx<'_>, j: usize) -> Vec<String> {
        let job = ctx.job(j);
        let release = ctx.release();
        let mut problems: Vec<String> = Vec::new();
        for (i, result) in job.results.iter().enumerate() {
            if self.components.is_empty() && ctx.counts(j, i) {
                continue;
            }
            for mismatch in check_inventory(&release.components, &self.components, result.ran_on())
            {
                let text = mismatch.to_string();
                if !problems.contains(&text) {
                    problems.push(text);
                }
            }
        }
        problems
    }

    /// Job `j`'s item: `None` when it has no result yet.
    fn item(&self, ctx: &Ctx<'_>, j: usize) -> Option<EvidenceItem> {
        let job = ctx.job(j);
        if job.results.is_empty() {
            return None;
        }
        Some(self.item_of(ctx, j, self.problems(ctx, j)))
    }

    fn item_of(&self, ctx: &Ctx<'_>, j: usize, problems: Vec<String>) -> EvidenceItem {
        let ok = problems.is_empty();
        EvidenceItem {
            limit: Some(describe_components(ctx.release(), &self.components)),
            signature: problems.first().map(|p| error_class(p)),
            ..item(
                ctx.job(j),
                if ok {
                    "observed inventory matches the release".into()
                } else {
                    problems.join("; ")
                },
                ok,
            )
        }
    }
}

impl Kind for Inventory {
    type Part = InventoryPart;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> InventoryPart {
        let n_results = ctx.job(j).results.len();
        // Only a node that did not run the release keeps an item: the passing item is built
        // when a sample is asked for, not for every node.
        let problems = self.problems(ctx, j);
        let bad = (n_results > 0 && !problems.is_empty()).then(|| self.item_of(ctx, j, problems));
        InventoryPart { n_results, bad }
    }

    fn add(&mut self, j: usize, part: &InventoryPart) {
        self.n_results += part.n_results;
        if part.bad.is_some() {
            self.flagged.insert(j);
        }
    }

    fn remove(&mut self, j: usize, part: &InventoryPart) {
        self.n_results -= part.n_results;
        self.flagged.remove(&j);
    }

    fn judge(&self, parts: &[InventoryPart], scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let release = ctx.release();
        let mut items: Vec<EvidenceItem> = self
            .flagged
            .iter()
            .filter_map(|j| parts[*j].bad.clone())
            .collect();
        let n_failing = items.len();
        let sample = scope.sample_ok(|j| self.item(ctx, j).into_iter().collect());
        if let Some(first) = items.first() {
            let reason = format!(
                "{n_failing} node(s) did not run release {}: {}: {}",
                release.id, first.node, first.detail
            );
            items.extend(sample);
            return judged(Verdict::Failed, reason, items);
        }
        items.extend(sample);
        let running = scope.n_running;
        if running > 0 || self.n_results == 0 {
            return judged(
                Verdict::Waiting,
                format!("inventory matches so far; {running} job(s) still running"),
                items,
            );
        }
        judged(
            Verdict::Passed,
            format!(
                "every node ran {} ({})",
                release.id,
                describe_components(release, &self.components)
            ),
            items,
        )
    }
}

fn describe_components(release: &Release, only: &[String]) -> String {
    release
        .components
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .map(|c| format!("{}={}", c.name, c.version))
        .collect::<Vec<_>>()
        .join(", ")
}
