//! Files that hold secrets (the embedded store, the admin secret, upstream credentials, and any other key or
//! credential file a command reads) must be readable by their owner only. As ssh does with a private key, a file
//! that its group or other users may read is refused, with the `chmod` that fixes it: a secret others could read
//! must be treated as leaked, not used.

use crate::error::{Error, Result};
use std::path::Path;

/// Permission bits that let the group or other users read, write or run the file.
#[cfg(unix)]
const SHARED_BITS: u32 = 0o077;

/// Refuses `path` (described as `what`, e.g. `--admin-secret-file`) when its group or others have any access to
/// it; a file that does not exist or cannot be examined is left to the caller's own read to report.
pub fn refuse_shared(path: &Path, what: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(metadata) = std::fs::metadata(path) else { return Ok(()) };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & SHARED_BITS != 0 {
            let shown = path.display();
            return Err(Error::denied(format!(
                "{what} {shown} is accessible by other users (mode {mode:03o}); it holds secrets, so it must be \
                 private to its owner: run `chmod 600 {shown}` (and, if others may have read it, replace its secrets)"
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
}

/// The text of a secret file, refused as [`refuse_shared`] does when others may read it.
pub fn read_private(path: &Path, what: &str) -> Result<String> {
    refuse_shared(path, what)?;
    std::fs::read_to_string(path).map_err(|e| Error::invalid(format!("reading {what} {}: {e}", path.display())))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_owner_only_files_are_read() {
        let dir = std::env::temp_dir().join(format!("metahub-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "s3cret").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o700, true), (0o640, false), (0o604, false), (0o620, false)]
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let read = read_private(&path, "--secret-file");
            assert_eq!(read.is_ok(), ok, "mode {mode:o}");
            if let Err(e) = read {
                assert!(e.message.contains(&format!("chmod 600 {}", path.display())), "{}", e.message);
                assert!(e.message.contains("--secret-file"), "{}", e.message);
            }
        }
        assert!(refuse_shared(&dir.join("absent"), "x").is_ok(), "a missing file is the read's to report");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
