//! Pages of list answers. Every list RPC takes `page_size` (0 for [`DEFAULT_PAGE_SIZE`], at
//! most [`MAX_PAGE_SIZE`]) and `page_token`, and answers `next_page_token`, empty after the
//! last page. A token is opaque to callers: it names its list, a fingerprint of the request's
//! filters and the order key of the last entry sent, so the next page starts right after it
//! (keyset pagination: entries inserted meanwhile are neither repeated nor skipped). A token of
//! another list or other filters, or one that does not decode, is `page_token` in
//! `InvalidArgument`.

use crate::fields::FieldErrors;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Entries per page when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most entries one page holds.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The longest `page_token` accepted; the controller's are far shorter.
pub const MAX_TOKEN_BYTES: usize = tollgate_domain::limits::PAGE_TOKEN.max;
/// The most bytes of entries one page (or one streamed message) holds: a page ends before an
/// entry that would take it past this, though it always holds one. A quarter of the 4 MiB
/// that gRPC clients decode by default, so an entry up to 3 MiB still fits beside the others.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// The lists that are paged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum List {
    /// `ListNodes`, by name.
    Nodes,
    /// `ListReleases`, newest first.
    Releases,
    /// `ListRuns`, newest first.
    Runs,
    /// `ListWaivers`, oldest first.
    Waivers,
    /// `ListAudit`, by position.
    Audit,
    /// A run's jobs in `GetRun`, by node name.
    Jobs,
    /// `ListIssues`, by number.
    Issues,
}

impl List {
    /// The RPC, for messages.
    pub fn rpc(self) -> &'static str {
        match self {
            Self::Nodes => "ListNodes",
            Self::Releases => "ListReleases",
            Self::Runs => "ListRuns",
            Self::Waivers => "ListWaivers",
            Self::Audit => "ListAudit",
            Self::Jobs => "GetRun",
            Self::Issues => "ListIssues",
        }
    }
}

/// The order key of the last entry of a page: where the next page starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum After {
    /// A name (nodes).
    Name(String),
    /// A creation time in microseconds since the epoch and the row's insertion number
    /// (releases, runs, waivers).
    Created {
        /// `created_at`, in microseconds.
        micros: i64,
        /// The insertion number breaking ties.
        seq: i64,
    },
    /// A position (audit entries).
    Seq(i64),
    /// A job's node name and id (a run's jobs).
    Job {
        /// The job's node.
        node: String,
        /// The job's id, breaking ties between jobs of one node.
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Token {
    list: List,
    filters: String,
    after: After,
}

/// One page asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// How many entries at most.
    pub size: usize,
    /// Start after this entry; `None` for the first page.
    pub after: Option<After>,
}

/// A fingerprint of a request's filters (FNV-1a, stable across builds), so a token is only
/// good with the filters it was issued for.
pub fn filters_fingerprint(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Checks `page_size` and `page_token` of a request to `list` with filters `filters` (see
/// [`filters_fingerprint`]); bad ones are recorded by name.
pub fn page_request(
    errors: &mut FieldErrors,
    list: List,
    filters: &str,
    page_size: u32,
    page_token: &str,
) -> Page {
    let size = match usize::try_from(page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE_SIZE,
        size if size > MAX_PAGE_SIZE => {
            errors.add(
                "page_size",
                format!(
                    "{page_size} is over the maximum of {MAX_PAGE_SIZE}; ask for at most \
                     {MAX_PAGE_SIZE} (or 0 for {DEFAULT_PAGE_SIZE}) and follow next_page_token"
                ),
            );
            MAX_PAGE_SIZE
        }
        size => size,
    };
    let after = if page_token.is_empty() {
        None
    } else {
        match decode(page_token) {
            Some(token) if token.list != list => {
                errors.add(
                    "page_token",
                    format!(
                        "is a page token of {}, not of {}; pass this list's next_page_token, or \
                         none for the first page",
                        token.list.rpc(),
                        list.rpc()
                    ),
                );
                None
            }
            Some(token) if token.filters != filters => {
                errors.add(
                    "page_token",
                    "was issued for other filters; repeat the first page's filters, or start \
                     again without a page token",
                );
                None
            }
            Some(token) => Some(token.after),
            None => {
                errors.add(
                    "page_token",
                    "is not a page token this controller issued; pass next_page_token as \
                     received, or none for the first page",
                );
                None
            }
        }
    };
    Page { size, after }
}

/// The token of the page after the one ending with `after`.
pub fn next_page_token(list: List, filters: &str, after: After) -> String {
    let token = Token {
        list,
        filters: filters.to_owned(),
        after,
    };
    let json = serde_json::to_vec(&token).expect("a page token always serializes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode(text: &str) -> Option<Token> {
    if text.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Of `fetched` (up to one more than `size`, in order), the page and the key of its last
/// entry when more follow.
pub fn split_page<T>(
    mut fetched: Vec<T>,
    size: usize,
    key: impl Fn(&T) -> After,
) -> (Vec<T>, Option<After>) {
    if fetched.len() <= size {
        return (fetched, None);
    }
    fetched.truncate(size);
    let after = fetched.last().map(key);
    (fetched, after)
}

/// Like [`split_page`], but the page also ends before an entry that would take the bytes of
/// its entries (`bytes` of each) past `max_bytes`; it always holds the first entry.
pub fn split_page_within<T>(
    mut fetched: Vec<T>,
    size: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
    key: impl Fn(&T) -> After,
) -> (Vec<T>, Option<After>) {
    let mut n_bytes = 0usize;
    let mut n_kept = 0;
    for entry in fetched.iter().take(size) {
        let entry_bytes = bytes(entry);
        if n_kept > 0 && n_bytes.saturating_add(entry_bytes) > max_bytes {
            break;
        }
        n_bytes = n_bytes.saturating_add(entry_bytes);
        n_kept += 1;
    }
    if n_kept == fetched.len() {
        return (fetched, None);
    }
    fetched.truncate(n_kept);
    let after = fetched.last().map(key);
    (fetched, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(list: List, filters: &str, size: u32, token: &str) -> Result<Page, Vec<String>> {
        let mut errors = FieldErrors::new();
        let page = page_request(&mut errors, list, filters, size, token);
        errors
            .finish(page)
            .map_err(|invalid| invalid.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn sizes_default_and_are_capped() {
        assert_eq!(
            checked(List::Runs, "", 0, "").unwrap().size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(checked(List::Runs, "", 1000, "").unwrap().size, 1000);
        let refused = checked(List::Runs, "", 1001, "").unwrap_err();
        assert!(refused[0].starts_with("page_size"), "{refused:?}");
    }

    #[test]
    fn a_token_leads_to_its_key_on_its_own_list_and_filters_only() {
        let after = After::Created { micros: 17, seq: 4 };
        let filters = filters_fingerprint(&["r1"]);
        let token = next_page_token(List::Runs, &filters, after.clone());
        assert_eq!(
            checked(List::Runs, &filters, 10, &token).unwrap().after,
            Some(after)
        );
        for (list, filters, needle) in [
            (
                List::Releases,
                filters.clone(),
                "is a page token of ListRuns, not of ListReleases",
            ),
            (List::Runs, filters_fingerprint(&["r2"]), "other filters"),
        ] {
            let refused = checked(list, &filters, 10, &token).unwrap_err();
            assert!(
                refused[0].starts_with("page_token") && refused[0].contains(needle),
                "{refused:?}"
            );
        }
        for garbage in ["nope", "%%%", &"a".repeat(2000)] {
            let refused = checked(List::Runs, &filters, 10, garbage).unwrap_err();
            assert!(refused[0].starts_with("page_token"), "{refused:?}");
        }
    }

    #[test]
    fn a_page_with_more_behind_it_ends_with_its_last_key() {
        let key = |n: &i64| After::Seq(*n);
        assert_eq!(
            split_page(vec![1, 2, 3], 2, key),
            (vec![1, 2], Some(After::Seq(2)))
        );
        assert_eq!(split_page(vec![1, 2], 2, key), (vec![1, 2], None));
        assert_eq!(split_page(Vec::<i64>::new(), 2, key), (vec![], None));
    }

    #[test]
    fn a_page_ends_before_the_entry_past_its_bytes_but_holds_one() {
        let key = |n: &usize| After::Seq(i64::try_from(*n).unwrap());
        let bytes = |n: &usize| *n;
        // 4 + 5 fit in 10, 4 + 5 + 3 do not: the page ends after 5.
        assert_eq!(
            split_page_within(vec![4, 5, 3, 1], 3, 10, bytes, key),
            (vec![4, 5], Some(After::Seq(5)))
        );
        // One entry over the budget is still sent, alone.
        assert_eq!(
            split_page_within(vec![50, 1], 3, 10, bytes, key),
            (vec![50], Some(After::Seq(50)))
        );
        // Within both bounds, the size decides as in `split_page`.
        assert_eq!(
            split_page_within(vec![1, 1, 1], 2, 10, bytes, key),
            (vec![1, 1], Some(After::Seq(1)))
        );
        assert_eq!(
            split_page_within(vec![1, 1], 2, 10, bytes, key),
            (vec![1, 1], None)
        );
        assert_eq!(
            split_page_within(Vec::<usize>::new(), 2, 10, bytes, key),
            (vec![], None)
        );
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            filters_fingerprint(&["ab", "c"]),
            filters_fingerprint(&["a", "bc"])
        );
        assert_eq!(filters_fingerprint(&["x"]), filters_fingerprint(&["x"]));
    }
}
