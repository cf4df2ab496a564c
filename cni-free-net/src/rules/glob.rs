//! Shell-style globs over interface names: `*` matches any run of characters
//! (including none), `?` exactly one character, everything else itself.

use std::fmt;

/// Characters refused in patterns because other glob dialects (udev's among
/// them) give them a meaning; refusing them now keeps room to support them
/// later without silently changing what existing rules match.
const RESERVED: &[char] = &['[', ']', '{', '}', '\\'];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("the pattern is empty")]
    Empty,
    #[error("{c:?} is not supported in patterns (only '*' and '?' are special)")]
    Unsupported { c: char },
    #[error("the pattern can never match: it contains {c:?}, which interface names cannot")]
    NeverMatchesChar { c: char },
    #[error("the pattern can never match: it needs at least {min_len} bytes and interface names have at most {max}")]
    NeverMatchesLength { min_len: usize, max: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    AnyRun,
}

impl Glob {
    /// Compiles a pattern meant for interface names, refusing patterns that
    /// could never match one (almost certainly a typo in a rules file).
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut min_len = 0;
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyChar,
                c if RESERVED.contains(&c) => return Err(GlobError::Unsupported { c }),
                c if c == '/' || c == ':' || c.is_whitespace() || c.is_control() => {
                    return Err(GlobError::NeverMatchesChar { c })
                }
                c => Token::Literal(c),
            };
            min_len += match token {
                Token::Literal(c) => c.len_utf8(),
                Token::AnyChar => 1,
                Token::AnyRun => 0,
            };
            // Consecutive stars mean the same as one; folding them keeps
            // matching linear in practice.
            if !(token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun)) {
                tokens.push(token);
            }
        }
        if min_len > crate::ifname::MAX_IFNAME_LEN {
            return Err(GlobError::NeverMatchesLength {
                min_len,
                max: crate::ifname::MAX_IFNAME_LEN,
            });
        }
        Ok(Self {
            source: pattern.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (mut t, mut n) = (0, 0);
        // Where to resume after the most recent '*': its token index, and the
        // name position it has swallowed up to. Only the latest star needs
        // backtracking, which keeps this O(len(name) * len(pattern)).
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(t) {
                Some(Token::AnyChar) => {
                    t += 1;
                    n += 1;
                }
                Some(Token::Literal(c)) if *c == name[n] => {
                    t += 1;
                    n += 1;
                }
                Some(Token::AnyRun) => {
                    star = Some((t, n));
                    t += 1;
                }
                _ => match star {
                    Some((star_t, star_n)) => {
                        star = Some((star_t, star_n + 1));
                        t = star_t + 1;
                        n = star_n + 1;
                    }
                    None => return false,
                },
            }
        }
        self.tokens[t..].iter().all(|tok| *tok == Token::AnyRun)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).expect("valid pattern")
    }

    #[test]
    fn literal_star_and_question_mark() {
        let cases = [
            ("okvm-tap*", "okvm-tap", true),
            ("okvm-tap*", "okvm-tap12", true),
            ("okvm-tap*", "okvm-ta", false),
            ("okvm-tap*", "xokvm-tap1", false),
            ("tap?", "tap1", true),
            ("tap?", "tap", false),
            ("tap?", "tap12", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b*c", "acb", false),
            ("*tap", "mytap", true),
            ("*tap", "mytapx", false),
            ("**x", "x", true),
            ("*?", "", false),
            ("*?", "a", true),
            ("?é?", "aéb", true),
            ("eth0", "eth0", true),
            ("eth0", "eth00", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob(pattern).matches(name), want, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn refuses_bad_patterns() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert_eq!(
            Glob::new("tap[0-9]"),
            Err(GlobError::Unsupported { c: '[' })
        );
        assert_eq!(Glob::new("tap\\*"), Err(GlobError::Unsupported { c: '\\' }));
        assert_eq!(
            Glob::new("eth0:*"),
            Err(GlobError::NeverMatchesChar { c: ':' })
        );
        assert_eq!(
            Glob::new("a/b"),
            Err(GlobError::NeverMatchesChar { c: '/' })
        );
        assert_eq!(
            Glob::new("okvm-tap-very-long*"),
            Err(GlobError::NeverMatchesLength {
                min_len: 18,
                max: 15
            })
        );
        // Stars cost nothing: a 15-byte literal plus stars is still satisfiable.
        assert!(Glob::new("*br-1a2b3c4d5e6f*").is_ok());
    }

    /// A slow but obviously correct reference matcher.
    fn reference(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| reference(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && reference(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && reference(rest, &n[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_matcher(pattern in "[ab*?]{1,8}", name in "[ab]{0,10}") {
            let p: Vec<char> = pattern.chars().collect();
            let n: Vec<char> = name.chars().collect();
            prop_assert_eq!(glob(&pattern).matches(&name), reference(&p, &n));
        }

        #[test]
        fn a_literal_pattern_matches_only_itself(name in "[a-z0-9.-]{1,15}", other in "[a-z0-9.-]{0,15}") {
            let g = glob(&name);
            prop_assert!(g.matches(&name));
            prop_assert_eq!(g.matches(&other), other == name);
        }
    }
}
