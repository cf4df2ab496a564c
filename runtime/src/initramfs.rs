//! A writer for the kernel's initramfs format ("newc" cpio, uncompressed).
//!
//! okvm's guest boots from an initramfs that holds only okvm-init. Writing it
//! ourselves keeps the image byte-for-byte reproducible (fixed owners and mtimes)
//! and lets it carry `/dev/console` without needing mknod on the build machine.

use std::collections::BTreeSet;
use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("initramfs path {0:?} must be relative, without '..', empty components or NUL bytes")]
    BadPath(String),
    #[error("initramfs path {0:?} is added twice")]
    Duplicate(String),
    #[error(
        "initramfs path {0:?} needs {1:?} to be a directory, but it was added as something else"
    )]
    NotADirectory(String, String),
    #[error("initramfs entry {0:?} is larger than 4 GiB, which newc cannot describe")]
    TooLarge(String),
    #[error("writing the initramfs: {0}")]
    Io(#[from] io::Error),
}

/// An initramfs under construction. Parent directories are added on demand, so
/// the kernel's unpacker (which never creates parents itself) always finds them.
#[derive(Default)]
pub struct Builder {
    entries: Vec<Entry>,
    names: BTreeSet<String>,
}

struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, Error> {
        self.add(path, S_IFDIR | (perm & 0o7777), (0, 0), Vec::new())
    }

    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<&mut Self, Error> {
        self.add(path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, Error> {
        self.add(path, S_IFLNK | 0o777, (0, 0), target.as_bytes().to_vec())
    }

    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, Error> {
        self.add(path, S_IFCHR | (perm & 0o7777), (major, minor), Vec::new())
    }

    fn add(
        &mut self,
        path: &str,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    ) -> Result<&mut Self, Error> {
        let name = normalize(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(Error::TooLarge(name));
        }
        // Implicit parents first.
        let mut parent = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if self.names.insert(parent.clone()) {
                self.entries.push(Entry {
                    name: parent.clone(),
                    mode: S_IFDIR | 0o755,
                    rdev: (0, 0),
                    data: Vec::new(),
                });
            } else if !self
                .entries
                .iter()
                .any(|e| e.name == parent && is_dir(e.mode))
            {
                return Err(Error::NotADirectory(name, parent));
            }
        }
        if !self.names.insert(name.clone()) {
            // An explicitly added directory may refine an implicit one's mode.
            if let Some(e) = self.entries.iter_mut().find(|e| e.name == name) {
                if is_dir(e.mode) && is_dir(mode) {
                    e.mode = mode;
                    return Ok(self);
                }
            }
            return Err(Error::Duplicate(name));
        }
        self.entries.push(Entry {
            name,
            mode,
            rdev,
            data,
        });
        Ok(self)
    }

    /// Writes the archive, trailer included.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<(), Error> {
        let mut written = 0usize;
        for (i, e) in self.entries.iter().enumerate() {
            let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let nlink = if is_dir(e.mode) { 2 } else { 1 };
            written += write_entry(out, ino, e.mode, nlink, e.rdev, &e.name, &e.data)?;
        }
        written += write_entry(out, 0, 0, 1, (0, 0), TRAILER, &[])?;
        // Some unpackers expect the archive to be a multiple of 512 bytes.
        let pad = (512 - written % 512) % 512;
        out.write_all(&vec![0u8; pad])?;
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

fn is_dir(mode: u32) -> bool {
    mode & 0o170000 == S_IFDIR
}

fn normalize(path: &str) -> Result<String, Error> {
    let trimmed = path.trim_start_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.contains('\0')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::BadPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

fn write_entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> Result<usize, Error> {
    let namesize = name.len() + 1;
    let header = format!(
        "{MAGIC}{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        size = data.len(),
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let mut n = header.len() + namesize;
    let pad = (4 - n % 4) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    n += pad;
    out.write_all(data)?;
    n += data.len();
    let pad = (4 - n % 4) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    Ok(n + pad)
}

/// The initramfs okvm boots: okvm-init as `/init`, and the few nodes the kernel
/// and init need before devtmpfs is mounted.
pub fn okvm_initramfs(init: Vec<u8>) -> Result<Vec<u8>, Error> {
    let mut b = with_boot_nodes()?;
    b.file("init", 0o755, init)?;
    Ok(b.to_bytes())
}

/// An initramfs holding only the nodes the kernel and an init need before
/// devtmpfs is mounted (`/dev/console` and the usual mount points).
pub fn with_boot_nodes() -> Result<Builder, Error> {
    let mut b = Builder::new();
    b.dir("dev", 0o755)?
        .char_device("dev/console", 0o600, 5, 1)?
        .dir("proc", 0o555)?
        .dir("sys", 0o555)?
        .dir("run", 0o755)?
        .dir("tmp", 0o1777)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (name, mode, (rdev major, minor), data) of one parsed entry.
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// A reader for what `write_to` produces, to check the format round-trips.
    fn parse(mut buf: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            let h = std::str::from_utf8(&buf[..110]).unwrap();
            assert_eq!(&h[..6], MAGIC);
            let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (mode, size, rmaj, rmin, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let mut p = 110 + namesize;
            p += (4 - (off + p) % 4) % 4;
            let data = buf[p..p + size].to_vec();
            p += size;
            p += (4 - (off + p) % 4) % 4;
            off += p;
            buf = &buf[p..];
            if name == TRAILER {
                assert!(buf.iter().all(|&b| b == 0));
                assert_eq!((off + buf.len()) % 512, 0);
                return out;
            }
            out.push((name, mode, (rmaj, rmin), data));
        }
    }

    #[test]
    fn okvm_image_has_init_and_console() {
        let img = okvm_initramfs(b"\x7fELF...".to_vec()).unwrap();
        let entries = parse(&img);
        let init = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.3, b"\x7fELF...");
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!(console.1, S_IFCHR | 0o600);
        assert_eq!(console.2, (5, 1));
        let tmp = entries.iter().find(|e| e.0 == "tmp").unwrap();
        assert_eq!(tmp.1, S_IFDIR | 0o1777);
    }

    #[test]
    fn parents_come_first_and_once() {
        let mut b = Builder::new();
        b.file("a/b/c", 0o644, vec![1]).unwrap();
        b.file("a/b/d", 0o644, vec![2]).unwrap();
        b.dir("a", 0o700).unwrap();
        let names: Vec<_> = parse(&b.to_bytes())
            .into_iter()
            .map(|e| (e.0, e.1))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a".to_string(), S_IFDIR | 0o700),
                ("a/b".to_string(), S_IFDIR | 0o755),
                ("a/b/c".to_string(), S_IFREG | 0o644),
                ("a/b/d".to_string(), S_IFREG | 0o644),
            ]
        );
    }

    #[test]
    fn bad_paths_and_duplicates_are_refused() {
        let mut b = Builder::new();
        for p in ["", "/", "a/../b", "a//b", "./a", "a\0b"] {
            assert!(
                matches!(b.file(p, 0o644, vec![]), Err(Error::BadPath(_))),
                "{p:?}"
            );
        }
        b.file("x", 0o644, vec![]).unwrap();
        assert!(matches!(
            b.file("/x", 0o644, vec![]),
            Err(Error::Duplicate(_))
        ));
        assert!(matches!(
            b.file("x/y", 0o644, vec![]),
            Err(Error::NotADirectory(..))
        ));
        assert!(b.to_string_lossy_names().contains(&"x".to_string()));
    }

    #[test]
    fn output_is_reproducible() {
        let a = okvm_initramfs(vec![7; 1000]).unwrap();
        let b = okvm_initramfs(vec![7; 1000]).unwrap();
        assert_eq!(a, b);
    }

    impl Builder {
        fn to_string_lossy_names(&self) -> Vec<String> {
            self.entries.iter().map(|e| e.name.clone()).collect()
        }
    }

    proptest! {
        #[test]
        fn any_files_round_trip(files in proptest::collection::btree_map(
            "[a-z]{1,8}(/[a-z]{1,8}){0,2}", proptest::collection::vec(any::<u8>(), 0..300), 1..8)) {
            let mut b = Builder::new();
            let mut added = Vec::new();
            for (path, data) in &files {
                // A path may collide with another's parent; that is refused.
                if b.file(path, 0o644, data.clone()).is_ok() {
                    added.push((path.clone(), data.clone()));
                }
            }
            let parsed = parse(&b.to_bytes());
            for (path, data) in added {
                let e = parsed.iter().find(|e| e.0 == path).unwrap();
                prop_assert_eq!(&e.3, &data);
            }
        }
    }
}
