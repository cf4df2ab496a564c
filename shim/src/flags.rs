//! The shim's command line, parsed the way containerd expects shims to parse it.
//!
//! containerd runs a shim as
//! `<shim> -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] [-bundle DIR] start|delete`
//! and the reference shims read that with Go's `flag` package. So do we, rule
//! for rule: one or two dashes, `-name value` or `-name=value`, booleans only
//! as `-name` or `-name=BOOL`, parsing stops at the first non-flag or at `--`,
//! and a value flag takes the next argument whatever it looks like.

use std::ffi::OsString;
use std::path::PathBuf;

/// What the shim was asked to do after its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No action word: serve the Task API (containerd runs this via `start`).
    Serve,
    /// Start (or find) the shim server for a task and print its address.
    Start,
    /// Clean up after a shim that died: containerd's last word on a task.
    Delete,
}

/// The flags containerd passes (and a few it may pass).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimFlags {
    pub namespace: Option<String>,
    pub address: Option<String>,
    pub publish_binary: Option<String>,
    pub id: Option<String>,
    /// Defaults to the working directory, where containerd starts the shim.
    pub bundle: Option<PathBuf>,
    pub socket: Option<String>,
    pub debug: bool,
    /// containerd ≥ 2.0 asks for runtime info with `-info`.
    pub info: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Version,
    Help,
    Run { flags: ShimFlags, action: Action },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("argument {position} is not valid UTF-8")]
    NotUtf8 { position: usize },
    #[error("bad flag syntax: {arg}")]
    BadSyntax { arg: String },
    #[error("flag provided but not defined: -{name}")]
    Unknown { name: String },
    #[error("flag needs an argument: -{name}")]
    MissingValue { name: String },
    #[error("invalid boolean value {value:?} for -{name}")]
    BadBool { name: String, value: String },
    #[error("unknown action {action:?} (expected \"start\" or \"delete\")")]
    UnknownAction { action: String },
    #[error("unexpected argument {arg:?} after the action")]
    ExtraArgument { arg: String },
    #[error("missing required flag -{name}")]
    MissingRequired { name: &'static str },
}

pub const USAGE: &str = "\
usage: containerd-shim-okvm-v2 [flags] [start|delete]

containerd starts this program; it is not meant to be run by hand.

flags:
  -namespace NS         containerd namespace that owns the task
  -id ID                id of the task
  -address ADDR         containerd's ttrpc/grpc address
  -publish-binary BIN   binary used to publish events to containerd
  -bundle DIR           bundle path (default: the working directory)
  -socket PATH          socket path to serve
  -debug                enable debug output in logs
  -info                 print runtime info and exit
  -v, -version          print the version and exit
  -h, -help             print this help and exit";

enum Flag {
    Bool(fn(&mut Parsed) -> &mut bool),
    Value(fn(&mut Parsed, String)),
}

/// Flags as parsed, before `Invocation` decides what they amount to.
#[derive(Default)]
struct Parsed {
    flags: ShimFlags,
    version: bool,
}

fn lookup(name: &str) -> Option<Flag> {
    Some(match name {
        "namespace" => Flag::Value(|p, v| p.flags.namespace = Some(v)),
        "address" => Flag::Value(|p, v| p.flags.address = Some(v)),
        "publish-binary" => Flag::Value(|p, v| p.flags.publish_binary = Some(v)),
        "id" => Flag::Value(|p, v| p.flags.id = Some(v)),
        "bundle" => Flag::Value(|p, v| p.flags.bundle = Some(PathBuf::from(v))),
        "socket" => Flag::Value(|p, v| p.flags.socket = Some(v)),
        "debug" => Flag::Bool(|p| &mut p.flags.debug),
        "info" => Flag::Bool(|p| &mut p.flags.info),
        "v" | "version" => Flag::Bool(|p| &mut p.version),
        _ => return None,
    })
}

/// Go's strconv.ParseBool.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Invocation, FlagError>
where
    I: IntoIterator<Item = OsString>,
{
    let args = args
        .into_iter()
        .enumerate()
        .map(|(i, arg)| {
            arg.into_string()
                .map_err(|_| FlagError::NotUtf8 { position: i + 1 })
        })
        .collect::<Result<Vec<String>, FlagError>>()?;
    let mut args = args.into_iter().peekable();
    let mut parsed = Parsed::default();

    while let Some(arg) = args.peek() {
        let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) else {
            break; // the first non-flag ("-" alone included) ends the flags
        };
        let name_and_value = match body.strip_prefix('-') {
            Some("") => {
                args.next(); // "--" ends the flags and is consumed
                break;
            }
            Some(rest) => rest,
            None => body,
        };
        if name_and_value.starts_with('-') || name_and_value.starts_with('=') {
            return Err(FlagError::BadSyntax { arg: arg.clone() });
        }
        let (name, inline_value) = match name_and_value.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (name_and_value.to_owned(), None),
        };
        args.next();

        let Some(flag) = lookup(&name) else {
            if name == "h" || name == "help" {
                return Ok(Invocation::Help);
            }
            return Err(FlagError::Unknown { name });
        };
        match flag {
            Flag::Bool(field) => {
                // Like Go, `-debug false` does not set false: "false" would
                // be the first non-flag. Only `-debug=false` does.
                let value = match inline_value {
                    Some(text) => parse_bool(&text).ok_or(FlagError::BadBool {
                        name: name.clone(),
                        value: text,
                    })?,
                    None => true,
                };
                *field(&mut parsed) = value;
            }
            Flag::Value(set) => {
                let value = match inline_value {
                    Some(value) => value,
                    // Like Go, the next argument is the value even if it
                    // starts with a dash.
                    None => args.next().ok_or(FlagError::MissingValue { name })?,
                };
                set(&mut parsed, value);
            }
        }
    }

    if parsed.version {
        return Ok(Invocation::Version);
    }
    let action = match args.next().as_deref() {
        None => Action::Serve,
        Some("start") => Action::Start,
        Some("delete") => Action::Delete,
        Some(other) => {
            return Err(FlagError::UnknownAction {
                action: other.to_owned(),
            })
        }
    };
    if let Some(arg) = args.next() {
        return Err(FlagError::ExtraArgument { arg });
    }
    Ok(Invocation::Run {
        flags: parsed.flags,
        action,
    })
}

impl ShimFlags {
    /// Checks the flags every action needs: without them the shim cannot
    /// tell which task it is for or where containerd is. Empty counts as missing.
    pub fn check_required(&self) -> Result<(), FlagError> {
        let required = [
            ("namespace", &self.namespace),
            ("id", &self.id),
            ("address", &self.address),
        ];
        for (name, value) in required {
            if matches!(value.as_deref(), None | Some("")) {
                return Err(FlagError::MissingRequired { name });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_strs(args: &[&str]) -> Result<Invocation, FlagError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> (ShimFlags, Action) {
        match parse_strs(args) {
            Ok(Invocation::Run { flags, action }) => (flags, action),
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn parses_containerds_start_invocation() {
        let (flags, action) = run(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc123",
            "-debug",
            "start",
        ]);
        assert_eq!(action, Action::Start);
        assert_eq!(
            flags,
            ShimFlags {
                namespace: Some("k8s.io".into()),
                address: Some("/run/containerd/containerd.sock".into()),
                publish_binary: Some("/usr/bin/containerd".into()),
                id: Some("abc123".into()),
                debug: true,
                ..ShimFlags::default()
            }
        );
        assert_eq!(flags.check_required(), Ok(()));
    }

    #[test]
    fn parses_containerds_delete_invocation_with_bundle() {
        let (flags, action) = run(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc123",
            "-bundle",
            "/run/containerd/io.containerd.runtime.v2.task/default/abc123",
            "delete",
        ]);
        assert_eq!(action, Action::Delete);
        assert_eq!(
            flags.bundle,
            Some(PathBuf::from(
                "/run/containerd/io.containerd.runtime.v2.task/default/abc123"
            ))
        );
        assert!(!flags.debug);
    }

    #[test]
    fn accepts_double_dashes_and_inline_values() {
        let (flags, action) = run(&["--namespace=ns", "--id", "x", "-address=/a=b", "--debug"]);
        assert_eq!(action, Action::Serve);
        assert_eq!(flags.namespace.as_deref(), Some("ns"));
        assert_eq!(flags.id.as_deref(), Some("x"));
        // Only the first '=' separates name from value.
        assert_eq!(flags.address.as_deref(), Some("/a=b"));
        assert!(flags.debug);
    }

    #[test]
    fn booleans_follow_go_rules() {
        assert!(!run(&["-debug=false"]).0.debug);
        assert!(run(&["-debug=T"]).0.debug);
        assert!(!run(&["-debug", "-debug=0"]).0.debug, "last one wins");
        // `-debug false` leaves "false" as the action, which is unknown.
        assert_eq!(
            parse_strs(&["-debug", "false"]),
            Err(FlagError::UnknownAction {
                action: "false".into()
            })
        );
        assert_eq!(
            parse_strs(&["-debug=yes"]),
            Err(FlagError::BadBool {
                name: "debug".into(),
                value: "yes".into()
            })
        );
    }

    #[test]
    fn a_value_flag_takes_the_next_argument_even_if_dashed() {
        let (flags, _) = run(&["-id", "-debug"]);
        assert_eq!(flags.id.as_deref(), Some("-debug"));
        assert!(!flags.debug);
    }

    #[test]
    fn flags_stop_at_the_first_non_flag_or_double_dash() {
        assert_eq!(
            parse_strs(&["start", "-debug"]),
            Err(FlagError::ExtraArgument {
                arg: "-debug".into()
            })
        );
        let (flags, action) = run(&["-debug", "--", "delete"]);
        assert!(flags.debug);
        assert_eq!(action, Action::Delete);
        // After "--", even a dashed word is positional.
        assert_eq!(
            parse_strs(&["--", "-debug"]),
            Err(FlagError::UnknownAction {
                action: "-debug".into()
            })
        );
        assert_eq!(
            parse_strs(&["-"]),
            Err(FlagError::UnknownAction { action: "-".into() })
        );
    }

    #[test]
    fn version_and_help() {
        for args in [
            &["-v"][..],
            &["--version"],
            &["-version"],
            &["-id", "x", "-v", "start"],
        ] {
            assert_eq!(parse_strs(args), Ok(Invocation::Version), "{args:?}");
        }
        for args in [&["-h"][..], &["--help"], &["-id", "x", "-help", "start"]] {
            assert_eq!(parse_strs(args), Ok(Invocation::Help), "{args:?}");
        }
    }

    #[test]
    fn rejects_unknown_flags() {
        assert_eq!(
            parse_strs(&["-namespace", "ns", "-runtime-root", "/x", "start"]),
            Err(FlagError::Unknown {
                name: "runtime-root".into()
            })
        );
        assert_eq!(
            parse_strs(&["-bogus=1"]),
            Err(FlagError::Unknown {
                name: "bogus".into()
            })
        );
        assert_eq!(
            FlagError::Unknown {
                name: "bogus".into()
            }
            .to_string(),
            "flag provided but not defined: -bogus"
        );
    }

    #[test]
    fn rejects_missing_values() {
        assert_eq!(
            parse_strs(&["-namespace", "ns", "-id"]),
            Err(FlagError::MissingValue { name: "id".into() })
        );
        assert_eq!(
            FlagError::MissingValue { name: "id".into() }.to_string(),
            "flag needs an argument: -id"
        );
    }

    #[test]
    fn rejects_bad_syntax() {
        for arg in ["---id", "-=x", "--=x"] {
            assert_eq!(
                parse_strs(&[arg]),
                Err(FlagError::BadSyntax { arg: arg.into() }),
                "{arg:?}"
            );
        }
    }

    #[test]
    fn rejects_unknown_actions_and_extra_arguments() {
        assert_eq!(
            parse_strs(&["-id", "x", "run"]),
            Err(FlagError::UnknownAction {
                action: "run".into()
            })
        );
        assert_eq!(
            parse_strs(&["delete", "now"]),
            Err(FlagError::ExtraArgument { arg: "now".into() })
        );
    }

    #[test]
    fn rejects_non_utf8_arguments() {
        use std::os::unix::ffi::OsStringExt as _;
        let args = vec![OsString::from("-id"), OsString::from_vec(vec![b'a', 0xff])];
        assert_eq!(parse(args), Err(FlagError::NotUtf8 { position: 2 }));
    }

    #[test]
    fn required_flags() {
        let (flags, _) = run(&["-namespace", "ns", "-address", "/a", "start"]);
        assert_eq!(
            flags.check_required(),
            Err(FlagError::MissingRequired { name: "id" })
        );
        let (flags, _) = run(&["-namespace", "", "-id", "x", "-address", "/a"]);
        assert_eq!(
            flags.check_required(),
            Err(FlagError::MissingRequired { name: "namespace" })
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_arguments(
            args in proptest::collection::vec("(-{0,3})([a-z=-]{0,8})", 0..8)
        ) {
            let _ = parse(args.into_iter().map(OsString::from));
        }
    }
}
