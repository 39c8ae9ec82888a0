//! Tag lists and `?ns=` names: straight from the name's upstream, never cached (tags move).

use super::RegistryService;
use crate::error::Result;
use crate::ports::{TagPage, Upstream as _};
use crate::reference::RepositoryName;

impl RegistryService {
    /// A page of `repository`'s tags from its upstream: at most `n`, after `last`.
    pub async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        self.upstream.tags(repository, n, last).await
    }

    /// The name `name` of registry `host` (`?ns=<host>`) goes by here; refused when no upstream serves `host`.
    pub fn name_in_namespace(&self, host: &str, name: &RepositoryName) -> Result<RepositoryName> {
        self.upstream.name_in_namespace(host, name)
    }
}
