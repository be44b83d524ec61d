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
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            filters_fingerprint(&["ab", "c"]),
            filters_fingerprint(&["a", "bc"])
        );
        assert_eq!(filters_fingerprint(&["x"]), filters_fingerprint(&["x"]));
    }
}
