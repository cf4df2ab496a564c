//! Paths inside a root that the container's image controls: symlinks in the
//! image must never lead a mount (or a device, or the cwd) outside the root.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one path before giving up (as the kernel's 40, with
/// room for images that chain them).
const MAX_LINKS: usize = 255;

/// `unsafe_path` inside `root`, with every symlink on the way resolved as if
/// `root` were `/` and `..` never climbing above it (what runc's securejoin
/// does). Components that do not exist yet are kept as given.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = components(unsafe_path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(resolved.iter().collect::<PathBuf>()).join(&c);
        let is_link = std::fs::symlink_metadata(&candidate)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            resolved.push(c);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "too many levels of symbolic links in {}",
                    unsafe_path.display()
                ),
            ));
        }
        let target = std::fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved.clear();
        }
        // The link's own components come next, before the rest of the path.
        pending.extend(components(&target).into_iter().rev());
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// The normal and `..` components of `p` (roots and `.` dropped).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let j = |p: &str| secure_join(root, Path::new(p)).unwrap();
        assert_eq!(j("/lib/x"), root.join("usr/lib/x"));
        assert_eq!(j("/../../etc/passwd"), root.join("etc/passwd"));
        assert_eq!(j("/usr/escape/hosts"), root.join("etc/hosts"));
        assert_eq!(j("usr/./lib/../lib"), root.join("usr/lib"));
        assert_eq!(j("/"), root.to_path_buf());
        assert_eq!(j("/new/dir"), root.join("new/dir"));
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
    }
}
