//! Paged list answers: a request's `page_size` and `page_token`, checked by the wire crate
//! (`tollgate_wire::page`), as the order key the store starts after, and a fetched page (one
//! entry more than asked, to know whether more follow) as its entries and `next_page_token`.

use super::status::FieldErrors;
use crate::store::CreatedKey;
use tollgate_wire::page::{
    After, List, MAX_PAGE_BYTES, next_page_token, page_request, split_page, split_page_within,
};

/// A page asked for: how many entries, after which key.
#[derive(Debug)]
pub struct PageAsk<K> {
    /// Entries on the page; the store is asked for one more.
    pub size: usize,
    /// The order key of the previous page's last entry.
    pub after: Option<K>,
    /// The request's filters, as a token carries them.
    filters: String,
    list: List,
}

impl<K> PageAsk<K> {
    /// How many entries to fetch: one more than the page, to know whether more follow.
    pub fn fetch(&self) -> usize {
        self.size.saturating_add(1)
    }

    /// Of `fetched` (see [`Self::fetch`]), the page and its `next_page_token` (empty at the
    /// end), `key` giving an entry's order key.
    pub fn answer<T>(&self, fetched: Vec<T>, key: impl Fn(&T) -> After) -> (Vec<T>, String) {
        let (page, after) = split_page(fetched, self.size, key);
        let token = after.map_or_else(String::new, |after| {
            next_page_token(self.list, &self.filters, after)
        });
        (page, token)
    }

    /// Like [`Self::answer`], but the page also ends before an entry that would take the
    /// answer past [`MAX_PAGE_BYTES`] (`bytes` of each entry: its encoded size), so that no
    /// answer outgrows what a gRPC client decodes.
    pub fn answer_within<T>(
        &self,
        fetched: Vec<T>,
        key: impl Fn(&T) -> After,
        bytes: impl Fn(&T) -> usize,
    ) -> (Vec<T>, String) {
        let (page, after) = split_page_within(fetched, self.size, MAX_PAGE_BYTES, bytes, key);
        let token = after.map_or_else(String::new, |after| {
            next_page_token(self.list, &self.filters, after)
        });
        (page, token)
    }
}

/// Checks a page request of `list` whose filters are `filters` (each one's text, in a fixed
/// order); bad fields are recorded in `errors`. `key` turns the token's key into the store's,
/// `None` when the token carries a key of another kind (not one this controller issued).
fn ask<K>(
    errors: &mut FieldErrors,
    list: List,
    filters: &[&str],
    page_size: u32,
    page_token: &str,
    key: impl FnOnce(After) -> Option<K>,
) -> PageAsk<K> {
    let filters = tollgate_wire::page::filters_fingerprint(filters);
    let page = page_request(errors, list, &filters, page_size, page_token);
    let after = page.after.and_then(|after| {
        let key = key(after);
        if key.is_none() {
            errors.add(
                "page_token",
                "is not a page token this controller issued; pass next_page_token as received, \
                 or none for the first page",
            );
        }
        key
    });
    PageAsk {
        size: page.size,
        after,
        filters,
        list,
    }
}

/// A page of a list ordered by name.
pub fn by_name(
    errors: &mut FieldErrors,
    list: List,
    filters: &[&str],
    page_size: u32,
    page_token: &str,
) -> PageAsk<String> {
    ask(
        errors,
        list,
        filters,
        page_size,
        page_token,
        |after| match after {
            After::Name(name) => Some(name),
            _ => None,
        },
    )
}

/// A page of a list ordered by creation ([`CreatedKey`]).
pub fn by_creation(
    errors: &mut FieldErrors,
    list: List,
    filters: &[&str],
    page_size: u32,
    page_token: &str,
) -> PageAsk<CreatedKey> {
    ask(
        errors,
        list,
        filters,
        page_size,
        page_token,
        |after| match after {
            After::Created { micros, seq } => {
                chrono::DateTime::from_timestamp_micros(micros).map(|at| (at, seq))
            }
            _ => None,
        },
    )
}

/// A page of a list ordered by position.
pub fn by_seq(
    errors: &mut FieldErrors,
    list: List,
    filters: &[&str],
    page_size: u32,
    page_token: &str,
) -> PageAsk<u64> {
    ask(
        errors,
        list,
        filters,
        page_size,
        page_token,
        |after| match after {
            After::Seq(seq) => u64::try_from(seq).ok(),
            _ => None,
        },
    )
}

/// A page of a run's jobs, ordered by node name and job id.
pub fn by_job(
    errors: &mut FieldErrors,
    filters: &[&str],
    page_size: u32,
    page_token: &str,
) -> PageAsk<(String, String)> {
    ask(
        errors,
        List::Jobs,
        filters,
        page_size,
        page_token,
        |after| match after {
            After::Job { node, id } => Some((node, id)),
            _ => None,
        },
    )
}

/// The token key of an entry ordered by creation.
pub fn created(key: &CreatedKey) -> After {
    After::Created {
        micros: key.0.timestamp_micros(),
        seq: key.1,
    }
}
