//! Linux network interface names, checked the way the kernel's `dev_valid_name`
//! checks them, so a bad name is refused when a config file is read rather than
//! by a netlink error much later.

use std::fmt;

/// The kernel's IFNAMSIZ is 16 including the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("an interface name cannot be empty")]
    Empty,
    #[error("interface name {name:?} is {len} bytes long; Linux allows at most {MAX_IFNAME_LEN}")]
    TooLong { name: String, len: usize },
    #[error("interface name {name:?} is reserved by the kernel")]
    Reserved { name: String },
    #[error("interface name {name:?} contains {c:?}, which Linux does not allow (no '/', ':' or whitespace)")]
    BadChar { name: String, c: char },
}

/// A name the kernel will accept for a network interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn new(name: &str) -> Result<Self, IfNameError> {
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(IfNameError::TooLong {
                name: name.to_owned(),
                len: name.len(),
            });
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved {
                name: name.to_owned(),
            });
        }
        // '/' would break /sys/class/net/<name>; ':' is taken by the old
        // alias syntax (eth0:1). The kernel refuses both, and whitespace.
        // Control characters are refused too: the kernel would take them, but
        // no tool shows such a name legibly.
        if let Some(c) = name
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(IfNameError::BadChar {
                name: name.to_owned(),
                c,
            });
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_up_to_15_bytes() {
        for ok in ["okvm0", "br-1a2b3c4d5e6f", "a", "x.y_z-0", "...", "é"] {
            assert_eq!(IfName::new(ok).map(|n| n.to_string()), Ok(ok.to_owned()));
        }
        assert_eq!("br-1a2b3c4d5e6f".len(), MAX_IFNAME_LEN);
    }

    #[test]
    fn refuses_what_the_kernel_refuses() {
        assert_eq!(IfName::new(""), Err(IfNameError::Empty));
        assert!(matches!(
            IfName::new("br-1a2b3c4d5e6f7"),
            Err(IfNameError::TooLong { len: 16, .. })
        ));
        // Length is in bytes, not characters: 8 two-byte characters are too many.
        assert!(matches!(
            IfName::new("éééééééé"),
            Err(IfNameError::TooLong { len: 16, .. })
        ));
        assert!(matches!(
            IfName::new("."),
            Err(IfNameError::Reserved { .. })
        ));
        assert!(matches!(
            IfName::new(".."),
            Err(IfNameError::Reserved { .. })
        ));
        for (bad, c) in [
            ("a/b", '/'),
            ("eth0:1", ':'),
            ("ok vm", ' '),
            ("tab\t", '\t'),
            ("nl\n", '\n'),
            ("nul\0", '\0'),
        ] {
            assert_eq!(
                IfName::new(bad),
                Err(IfNameError::BadChar {
                    name: bad.into(),
                    c
                })
            );
        }
    }
}
