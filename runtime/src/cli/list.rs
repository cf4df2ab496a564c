//! `okvm list`: the containers under `--root`, as runc prints them.

use super::Context;
use crate::state::{self, State};

pub fn run(ctx: &Context, args: liboci_cli::List) -> anyhow::Result<()> {
    let states: Vec<State> = state::list(&ctx.root)?
        .iter()
        .filter_map(|c| c.current().ok())
        .collect();
    print!("{}", render(&states, &args.format, args.quiet)?);
    Ok(())
}

fn render(states: &[State], format: &str, quiet: bool) -> anyhow::Result<String> {
    if quiet {
        return Ok(states.iter().map(|s| format!("{}\n", s.id)).collect());
    }
    match format {
        "json" => Ok(format!("{}\n", serde_json::to_string(states)?)),
        "table" => {
            let mut out = String::from("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n");
            for s in states {
                out += &format!(
                    "{}\t{}\t{}\t{}\t{}\troot\n",
                    s.id,
                    s.pid.unwrap_or(0),
                    s.status,
                    s.bundle.display(),
                    s.created
                );
            }
            Ok(out)
        }
        other => anyhow::bail!("invalid format option {other:?}: use table or json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Status;

    fn st(id: &str) -> State {
        State {
            oci_version: "1.2.0".into(),
            id: id.into(),
            status: Status::Created,
            pid: Some(7),
            bundle: "/b".into(),
            annotations: Default::default(),
            created: "t".into(),
            pod: None,
        }
    }

    #[test]
    fn formats_like_runc() {
        let s = [st("a"), st("b")];
        assert_eq!(render(&s, "table", true).unwrap(), "a\nb\n");
        let table = render(&s, "table", false).unwrap();
        assert!(table.starts_with("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n"));
        assert!(table.contains("a\t7\tcreated\t/b\tt\troot\n"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&s, "json", false).unwrap()).unwrap();
        assert_eq!(json[1]["id"], "b");
        assert!(render(&s, "yaml", false).is_err());
    }
}
