//! Declarative, udev-like rules that say which bridge a new interface joins:
//!
//! ```text
//! # taps of okvm sandboxes join the default bridge
//! match-name=okvm-tap* bridge=okvm0
//! ```
//!
//! One rule per line, `key=value` fields separated by whitespace, in any order;
//! whole-line `#` comments and blank lines are ignored. The first rule whose
//! pattern matches an interface name decides, so specific rules go first.

mod glob;

use std::path::{Path, PathBuf};

pub use glob::{Glob, GlobError};

use crate::ifname::{IfName, IfNameError};

const KEY_MATCH_NAME: &str = "match-name";
const KEY_BRIDGE: &str = "bridge";

/// What is wrong with a rule, without the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleErrorKind {
    #[error("{field:?} is not a key=value field")]
    NotKeyValue { field: String },
    #[error("unknown key {key:?} (known keys: {KEY_MATCH_NAME}, {KEY_BRIDGE})")]
    UnknownKey { key: String },
    #[error("{key} is given twice")]
    DuplicateKey { key: &'static str },
    #[error("the rule has no {key}= field")]
    MissingKey { key: &'static str },
    #[error("bad {KEY_MATCH_NAME} pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: GlobError },
    #[error("bad {KEY_BRIDGE}: {0}")]
    BadBridge(IfNameError),
}

/// A rule that failed to parse, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct RulesError {
    pub line: usize,
    pub kind: RuleErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesFileError {
    #[error("cannot read rules file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{}: {}", path.display(), error.line, error.kind)]
    Parse { path: PathBuf, error: RulesError },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pattern: Glob,
    bridge: IfName,
    line: usize,
}

impl Rule {
    pub fn pattern(&self) -> &Glob {
        &self.pattern
    }

    pub fn bridge(&self) -> &IfName {
        &self.bridge
    }

    /// The line the rule was read from, for messages such as
    /// "okvm-tap3 joined okvm0 (rule on line 4)".
    pub fn line(&self) -> usize {
        self.line
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rule = parse_rule(line, line_no).map_err(|kind| RulesError {
                line: line_no,
                kind,
            })?;
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    /// Reads and parses a rules file; errors name the file and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RulesFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RulesFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|error| RulesFileError::Parse {
            path: path.to_owned(),
            error,
        })
    }

    /// The first rule that matches `ifname`, if any.
    pub fn rule_for(&self, ifname: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.pattern.matches(ifname))
    }

    /// The bridge `ifname` should join, by the first matching rule.
    pub fn bridge_for(&self, ifname: &str) -> Option<&str> {
        self.rule_for(ifname).map(|rule| rule.bridge.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_rule(line: &str, line_no: usize) -> Result<Rule, RuleErrorKind> {
    let mut pattern: Option<&str> = None;
    let mut bridge: Option<&str> = None;
    for field in line.split_whitespace() {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| RuleErrorKind::NotKeyValue {
                field: field.to_owned(),
            })?;
        let (slot, key) = match key {
            KEY_MATCH_NAME => (&mut pattern, KEY_MATCH_NAME),
            KEY_BRIDGE => (&mut bridge, KEY_BRIDGE),
            other => {
                return Err(RuleErrorKind::UnknownKey {
                    key: other.to_owned(),
                })
            }
        };
        if slot.replace(value).is_some() {
            return Err(RuleErrorKind::DuplicateKey { key });
        }
    }
    let pattern = pattern.ok_or(RuleErrorKind::MissingKey {
        key: KEY_MATCH_NAME,
    })?;
    let bridge = bridge.ok_or(RuleErrorKind::MissingKey { key: KEY_BRIDGE })?;
    Ok(Rule {
        pattern: Glob::new(pattern).map_err(|reason| RuleErrorKind::BadPattern {
            pattern: pattern.to_owned(),
            reason,
        })?,
        bridge: IfName::new(bridge).map_err(RuleErrorKind::BadBridge)?,
        line: line_no,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> RulesError {
        Rules::parse(text).expect_err("should be refused")
    }

    /// Tells whether an error is the one a case expects.
    type IsExpected = fn(&RuleErrorKind) -> bool;

    #[test]
    fn first_matching_rule_wins() {
        let rules = Rules::parse(
            "# okvm attach rules\n\
             \n\
             match-name=okvm-tap-db* bridge=okvm-db\n\
             \tbridge=okvm0   match-name=okvm-tap*  \n\
             match-name=okvm-tap-db1 bridge=never\n\
             match-name=vm?? bridge=legacy\n",
        )
        .expect("valid rules");
        assert_eq!(rules.len(), 4);
        assert_eq!(rules.bridge_for("okvm-tap-db1"), Some("okvm-db"));
        assert_eq!(rules.bridge_for("okvm-tap7"), Some("okvm0"));
        assert_eq!(rules.bridge_for("vm12"), Some("legacy"));
        assert_eq!(rules.bridge_for("vm123"), None);
        assert_eq!(rules.bridge_for("eth0"), None);
        assert_eq!(rules.rule_for("okvm-tap7").map(Rule::line), Some(4));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_rules() {
        assert!(Rules::parse("").expect("empty").is_empty());
        assert!(Rules::parse("# nothing\n\n   # here\n")
            .expect("comments")
            .is_empty());
        assert_eq!(
            Rules::parse("").expect("empty").bridge_for("okvm-tap0"),
            None
        );
    }

    #[test]
    fn errors_carry_the_line_number() {
        let err = parse_err("# c\nmatch-name=a* bridge=ok\nmatch-name=b*\n");
        assert_eq!(
            err,
            RulesError {
                line: 3,
                kind: RuleErrorKind::MissingKey { key: KEY_BRIDGE }
            }
        );
        assert_eq!(err.to_string(), "line 3: the rule has no bridge= field");
    }

    #[test]
    fn each_kind_of_bad_line() {
        let cases: &[(&str, IsExpected)] = &[
            ("match-name=a* bridge", |k| {
                matches!(k, RuleErrorKind::NotKeyValue { .. })
            }),
            (
                "match-name=a* bridge=ok name=x",
                |k| matches!(k, RuleErrorKind::UnknownKey { key } if key == "name"),
            ),
            ("match-name=a* bridge=ok bridge=ok2", |k| {
                matches!(k, RuleErrorKind::DuplicateKey { key: KEY_BRIDGE })
            }),
            ("bridge=ok", |k| {
                matches!(
                    k,
                    RuleErrorKind::MissingKey {
                        key: KEY_MATCH_NAME
                    }
                )
            }),
            ("match-name= bridge=ok", |k| {
                matches!(
                    k,
                    RuleErrorKind::BadPattern {
                        reason: GlobError::Empty,
                        ..
                    }
                )
            }),
            ("match-name=tap[0-9] bridge=ok", |k| {
                matches!(
                    k,
                    RuleErrorKind::BadPattern {
                        reason: GlobError::Unsupported { c: '[' },
                        ..
                    }
                )
            }),
            ("match-name=a* bridge=", |k| {
                matches!(k, RuleErrorKind::BadBridge(IfNameError::Empty))
            }),
            ("match-name=a* bridge=this-is-too-long", |k| {
                matches!(
                    k,
                    RuleErrorKind::BadBridge(IfNameError::TooLong { len: 16, .. })
                )
            }),
            ("match-name=a* bridge=a/b", |k| {
                matches!(
                    k,
                    RuleErrorKind::BadBridge(IfNameError::BadChar { c: '/', .. })
                )
            }),
            ("match-name=a* bridge=..", |k| {
                matches!(k, RuleErrorKind::BadBridge(IfNameError::Reserved { .. }))
            }),
            ("match-name=a* bridge=.", |k| {
                matches!(k, RuleErrorKind::BadBridge(IfNameError::Reserved { .. }))
            }),
        ];
        for (line, is_expected) in cases {
            match Rules::parse(line) {
                Err(RulesError { line: 1, kind }) => {
                    assert!(is_expected(&kind), "unexpected {kind:?} for {line:?}")
                }
                Err(other) => panic!("wrong line in {other:?} for {line:?}"),
                Ok(_) => panic!("{line:?} was accepted"),
            }
        }
    }

    #[test]
    fn only_the_first_equals_sign_separates_key_and_value() {
        // '=' is a legal character in an interface name.
        let rules = Rules::parse("match-name=a=* bridge=ok").expect("valid rule");
        assert_eq!(rules.bridge_for("a=1"), Some("ok"));
        assert_eq!(rules.bridge_for("a1"), None);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("okvm-net.rules");
        std::fs::write(&path, "match-name=okvm-tap* bridge=okvm0\nbogus\n").expect("write");
        let err = Rules::load(&path).expect_err("line 2 is bad");
        assert_eq!(
            err.to_string(),
            format!("{}:2: \"bogus\" is not a key=value field", path.display())
        );
        let missing = Rules::load(dir.path().join("absent")).expect_err("no such file");
        assert!(matches!(missing, RulesFileError::Read { .. }));
    }
}
