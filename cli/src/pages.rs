//! Following a list RPC's pages: every page by default, or until `--limit N` entries.

use clap::Args;
use std::future::Future;

/// `--limit` and `--page-size`, flattened into every list command.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct PageArgs {
    /// Stop after N entries (default: all of them, following every page).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Entries the controller sends per page (1-1000; default: the controller's, 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,
}

/// Every entry of a list, page after page, until the last page or `args.limit` entries.
/// `fetch(page_size, page_token)` asks for one page and answers its entries and
/// `next_page_token`.
pub async fn follow<T, F, Fut, E>(args: PageArgs, mut fetch: F) -> Result<Vec<T>, E>
where
    F: FnMut(u32, String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), E>>,
{
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let wanted = args.limit.map(|limit| limit.saturating_sub(entries.len()));
        if wanted == Some(0) {
            break;
        }
        // Never ask for more than is still wanted (nor than the controller's maximum).
        let page_size = match (args.page_size, wanted) {
            (size, Some(wanted)) => {
                let wanted = u32::try_from(wanted.min(1000)).unwrap_or(1000);
                size.map_or(wanted, |size| size.min(wanted))
            }
            (size, None) => size.unwrap_or(0),
        };
        let (page, next) = fetch(page_size, token).await?;
        entries.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    if let Some(limit) = args.limit {
        entries.truncate(limit);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of `n` numbers served `max` at a time, recording the page sizes asked for.
    async fn serve(n: u32, args: PageArgs) -> (Vec<u32>, Vec<u32>) {
        let mut asked = Vec::new();
        let got = follow(args, |size, token: String| {
            asked.push(size);
            let size = if size == 0 { 4 } else { size };
            let start: u32 = token.parse().unwrap_or(0);
            let end = (start + size).min(n);
            let next = if end < n {
                end.to_string()
            } else {
                String::new()
            };
            std::future::ready(Ok::<_, ()>(((start..end).collect(), next)))
        })
        .await
        .unwrap();
        (got, asked)
    }

    #[tokio::test]
    async fn every_page_is_followed_by_default() {
        let (got, asked) = serve(10, PageArgs::default()).await;
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(asked, [0, 0, 0]);
    }

    #[tokio::test]
    async fn a_limit_stops_early_asking_only_for_what_is_missing() {
        let args = PageArgs {
            limit: Some(7),
            page_size: Some(3),
        };
        let (got, asked) = serve(10, args).await;
        assert_eq!(got, (0..7).collect::<Vec<_>>());
        assert_eq!(asked, [3, 3, 1]);
    }
}
