//! Tag lists and `?ns=` names: straight from the name's upstream, never cached (tags move).

use super::RegistryService;
use crate::error::Result;
use crate::ports::{TagPage, Upstream as _};
use crate::reference::RepositoryName;

impl RegistryService {
    /// A page of `repository`'s tags from its upstream: at most `n`, after `last`.
    pub async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        let page = self.upstream().tags(repository, n, last).await?;
        Ok(paginate(page, n, last))
    }

    /// The name `name` of registry `host` (`?ns=<host>`) goes by here; refused when no upstream serves `host`.
    pub fn name_in_namespace(&self, host: &str, name: &RepositoryName) -> Result<RepositoryName> {
        self.upstream().name_in_namespace(host, name)
    }
}

/// The page the client asked for. An upstream that ignores `n` and `last` (docker-registry 2.8 does) sends its whole
/// list: then MetaHub pages it itself. Tags are always answered in lexical order, as the spec asks.
fn paginate(mut page: TagPage, n: Option<usize>, last: Option<&str>) -> TagPage {
    // Some upstreams (docker-registry 2.8) list in storage order.
    page.tags.sort();
    let paged_upstream =
        n.is_none_or(|n| page.tags.len() <= n) && last.is_none_or(|l| page.tags.iter().all(|t| t.as_str() > l));
    if paged_upstream {
        return page;
    }
    let mut tags: Vec<String> = page.tags.into_iter().filter(|t| last.is_none_or(|l| t.as_str() > l)).collect();
    let more = n.is_some_and(|n| tags.len() > n);
    tags.truncate(n.unwrap_or(tags.len()));
    let next_last = if more { tags.last().cloned() } else { page.next_last };
    TagPage { tags, next_last }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(tags: &[&str]) -> TagPage {
        TagPage { tags: tags.iter().map(|t| t.to_string()).collect(), next_last: None }
    }

    #[test]
    fn pages_an_upstream_that_ignores_n_and_last() {
        let all = page(&["c", "a", "e", "b", "d"]);
        assert_eq!(paginate(all.clone(), Some(2), None), TagPage { next_last: Some("b".into()), ..page(&["a", "b"]) });
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            TagPage { next_last: Some("d".into()), ..page(&["c", "d"]) }
        );
        assert_eq!(paginate(all.clone(), Some(2), Some("d")), page(&["e"]));
        assert_eq!(paginate(all.clone(), None, Some("c")), page(&["d", "e"]));
        assert_eq!(paginate(all.clone(), None, None), page(&["a", "b", "c", "d", "e"]), "sorted even unpaged");
    }

    #[test]
    fn keeps_a_page_the_upstream_made() {
        let upstream = TagPage { next_last: Some("b".into()), ..page(&["a", "b"]) };
        assert_eq!(paginate(upstream.clone(), Some(2), None), upstream);
        let next = page(&["c"]);
        assert_eq!(paginate(next.clone(), Some(2), Some("b")), next);
    }
}
