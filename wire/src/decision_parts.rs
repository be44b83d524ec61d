//! A gate decision cut into `StreamDecision`'s parts, none larger than a page
//! ([`MAX_PAGE_BYTES`]), and put back together: the controller calls [`split`], clients
//! [`assemble`]. A decision over thousands of failing nodes does not fit one gRPC message.

use crate::page::MAX_PAGE_BYTES;
use prost::Message as _;
use tollgate_proto::v1 as pb;

/// What a stream of parts got wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartsError {
    /// The first part was not the decision's head, or a second head came.
    #[error(
        "the controller's decision stream {0}; evaluate again, and report it if it happens again"
    )]
    Misordered(&'static str),
    /// A part named a rule the head does not have.
    #[error(
        "the controller's decision stream sent a part of rule {index}, but the decision has \
         {n_rules} rules; evaluate again, and report it if it happens again"
    )]
    NoSuchRule {
        /// The rule index the part named.
        index: u32,
        /// Rules in the head.
        n_rules: usize,
    },
}

/// Bytes an entry of a repeated field takes beyond its own encoding: its tag and length.
const ENTRY_OVERHEAD: usize = 8;

/// `decision` as parts of at most `max_bytes` each (an item larger than that alone goes in a
/// part of its own): the head first, then each rule's evidence, failing nodes and failure
/// groups in order, then `greenwave_json` in pieces. [`assemble`] gives `decision` back.
pub fn split(mut decision: pb::Decision, max_bytes: usize) -> Vec<pb::DecisionPart> {
    let greenwave = std::mem::take(&mut decision.greenwave_json);
    let mut lists = Vec::with_capacity(decision.rules.len());
    for rule in &mut decision.rules {
        lists.push((
            std::mem::take(&mut rule.evidence),
            std::mem::take(&mut rule.failing_nodes),
            std::mem::take(&mut rule.failure_groups),
        ));
    }
    let mut parts = vec![part(pb::decision_part::Part::Head(decision))];
    for (rule_idx, (evidence, failing_nodes, failure_groups)) in lists.into_iter().enumerate() {
        let rule_index = u32::try_from(rule_idx).unwrap_or(u32::MAX);
        let mut cutter = RuleCutter::new(rule_index, max_bytes);
        for item in evidence {
            let n_bytes = item.encoded_len();
            cutter.push(n_bytes, &mut parts, |part| part.evidence.push(item));
        }
        for node in failing_nodes {
            let n_bytes = node.len();
            cutter.push(n_bytes, &mut parts, |part| part.failing_nodes.push(node));
        }
        for group in failure_groups {
            let n_bytes = group.encoded_len();
            cutter.push(n_bytes, &mut parts, |part| part.failure_groups.push(group));
        }
        cutter.finish(&mut parts);
    }
    for piece in text_pieces(&greenwave, max_bytes) {
        parts.push(part(pb::decision_part::Part::GreenwaveJson(
            piece.to_owned(),
        )));
    }
    parts
}

/// The decision `parts` (from [`split`], in order) make up.
pub fn assemble(
    parts: impl IntoIterator<Item = pb::DecisionPart>,
) -> Result<pb::Decision, PartsError> {
    use pb::decision_part::Part;
    let mut decision: Option<pb::Decision> = None;
    for pb::DecisionPart { part } in parts {
        match (part, decision.as_mut()) {
            (Some(Part::Head(head)), None) => decision = Some(head),
            (Some(Part::Head(_)), Some(_)) => {
                return Err(PartsError::Misordered("sent the decision's head twice"));
            }
            (Some(_), None) => {
                return Err(PartsError::Misordered(
                    "did not start with the decision's head",
                ));
            }
            (Some(Part::Rule(rule_part)), Some(decision)) => {
                let pb::RuleDecisionPart {
                    rule_index,
                    evidence,
                    failing_nodes,
                    failure_groups,
                } = rule_part;
                let n_rules = decision.rules.len();
                let rule = usize::try_from(rule_index)
                    .ok()
                    .and_then(|idx| decision.rules.get_mut(idx))
                    .ok_or(PartsError::NoSuchRule {
                        index: rule_index,
                        n_rules,
                    })?;
                rule.evidence.extend(evidence);
                rule.failing_nodes.extend(failing_nodes);
                rule.failure_groups.extend(failure_groups);
            }
            (Some(Part::GreenwaveJson(piece)), Some(decision)) => {
                decision.greenwave_json.push_str(&piece);
            }
            // A part of a kind this client does not know yet: nothing to add.
            (None, _) => {}
        }
    }
    decision.ok_or(PartsError::Misordered("ended before the decision's head"))
}

fn part(part: pb::decision_part::Part) -> pb::DecisionPart {
    pb::DecisionPart { part: Some(part) }
}

/// Fills one rule's parts, starting a new one before an item that would take the current one
/// past its bytes.
struct RuleCutter {
    rule_index: u32,
    max_bytes: usize,
    current: pb::RuleDecisionPart,
    n_bytes: usize,
    n_items: usize,
}

impl RuleCutter {
    fn new(rule_index: u32, max_bytes: usize) -> Self {
        Self {
            rule_index,
            max_bytes,
            current: Self::empty(rule_index),
            n_bytes: 0,
            n_items: 0,
        }
    }

    fn empty(rule_index: u32) -> pb::RuleDecisionPart {
        pb::RuleDecisionPart {
            rule_index,
            ..Default::default()
        }
    }

    fn push(
        &mut self,
        n_bytes: usize,
        parts: &mut Vec<pb::DecisionPart>,
        add: impl FnOnce(&mut pb::RuleDecisionPart),
    ) {
        let n_bytes = n_bytes + ENTRY_OVERHEAD;
        if self.n_items > 0 && self.n_bytes + n_bytes > self.max_bytes {
            self.finish(parts);
        }
        add(&mut self.current);
        self.n_bytes += n_bytes;
        self.n_items += 1;
    }

    fn finish(&mut self, parts: &mut Vec<pb::DecisionPart>) {
        if self.n_items == 0 {
            return;
        }
        let full = std::mem::replace(&mut self.current, Self::empty(self.rule_index));
        parts.push(part(pb::decision_part::Part::Rule(full)));
        self.n_bytes = 0;
        self.n_items = 0;
    }
}

/// `text` in pieces of at most `max_bytes` (at least one character each), cut at character
/// boundaries; none for empty text.
fn text_pieces(text: &str, max_bytes: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = max_bytes.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// [`split`] at the page size the controller streams with.
pub fn split_for_stream(decision: pb::Decision) -> Vec<pb::DecisionPart> {
    split(decision, MAX_PAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(node: &str, ok: bool) -> pb::EvidenceItem {
        pb::EvidenceItem {
            node: node.into(),
            step: "diag".into(),
            attempt: 1,
            detail: format!("diag on {node}"),
            ok,
            signature: if ok {
                String::new()
            } else {
                "diag: failed".into()
            },
            ..Default::default()
        }
    }

    fn decision(n_nodes: usize) -> pb::Decision {
        let nodes: Vec<String> = (0..n_nodes).map(|n| format!("lab-{n:05}")).collect();
        let rule = |id: &str| pb::RuleDecision {
            rule_id: id.into(),
            kind: "steps-passed".into(),
            verdict: "failed".into(),
            reason: "diag failed on many nodes".into(),
            evidence: nodes.iter().map(|node| item(node, false)).collect(),
            failing_nodes: nodes.clone(),
            failure_groups: vec![pb::FailureGroup {
                signature: "diag: failed".into(),
                count: u32::try_from(n_nodes).unwrap(),
                nodes: nodes.clone(),
            }],
            waiver_id: String::new(),
        };
        pb::Decision {
            release: "r1".into(),
            milestone: "lab-qual".into(),
            verdict: "failed".into(),
            summary: "2 of 3 rules failed".into(),
            rules: vec![rule("steps"), rule("empty"), rule("diag")],
            digest: "ab".repeat(32),
            greenwave_json: format!("{{\"summary\": \"é{}\"}}", "x".repeat(5000)),
            ..Default::default()
        }
    }

    #[test]
    fn parts_make_up_the_decision_and_none_is_larger_than_asked() {
        let mut whole = decision(500);
        whole.rules[1].evidence.clear();
        whole.rules[1].failing_nodes.clear();
        whole.rules[1].failure_groups.clear();
        // Larger than the failure group (500 node names), smaller than the evidence.
        let max_bytes = 8192;
        let parts = split(whole.clone(), max_bytes);
        assert!(parts.len() > 6, "{} parts", parts.len());
        for part in &parts {
            // A part's own framing adds a few bytes to its items'.
            assert!(
                part.encoded_len() <= max_bytes + 64,
                "{}",
                part.encoded_len()
            );
        }
        assert_eq!(assemble(parts), Ok(whole));
    }

    #[test]
    fn an_item_larger_than_a_part_goes_alone() {
        let mut whole = decision(3);
        whole.rules[0].evidence[1].detail = "y".repeat(10_000);
        let parts = split(whole.clone(), 1000);
        assert!(parts.iter().any(|part| part.encoded_len() > 10_000));
        assert_eq!(assemble(parts), Ok(whole));
    }

    #[test]
    fn a_small_decision_is_its_head_and_one_part_per_list() {
        let whole = decision(2);
        let parts = split_for_stream(whole.clone());
        // The head, one part per rule, one piece of greenwave.
        assert_eq!(parts.len(), 5);
        assert_eq!(assemble(parts), Ok(whole));
    }

    #[test]
    fn greenwave_is_cut_at_character_boundaries() {
        assert_eq!(text_pieces("ééé", 3), ["é", "é", "é"]);
        assert_eq!(text_pieces("ééé", 1), ["é", "é", "é"]);
        assert_eq!(text_pieces("abcde", 2), ["ab", "cd", "e"]);
        assert!(text_pieces("", 2).is_empty());
    }

    #[test]
    fn a_stream_out_of_order_is_refused() {
        let parts = split(decision(2), 1 << 20);
        let mut headless = parts.clone();
        headless.remove(0);
        assert!(matches!(assemble(headless), Err(PartsError::Misordered(_))));
        let mut twice = parts.clone();
        twice.push(parts[0].clone());
        assert!(matches!(assemble(twice), Err(PartsError::Misordered(_))));
        assert!(matches!(
            assemble(Vec::new()),
            Err(PartsError::Misordered(_))
        ));
        let mut stray = parts;
        stray.push(part(pb::decision_part::Part::Rule(pb::RuleDecisionPart {
            rule_index: 9,
            ..Default::default()
        })));
        assert_eq!(
            assemble(stray),
            Err(PartsError::NoSuchRule {
                index: 9,
                n_rules: 3
            })
        );
    }
}
