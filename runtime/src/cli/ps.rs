//! `okvm ps`: the container's processes.
//!
//! They live in the VM, inside one host process, the sandbox. As with runc,
//! `--format json` lists host pids (the sandbox's: the one a host tool can
//! signal or inspect); the table pairs it with each guest pid.

use anyhow::bail;
use okvm_protocol::{RequestBody, ResponseBody};

use super::Context;
use crate::guest::Address;
use crate::state::{Container, Status};

pub fn run(ctx: &Context, args: liboci_cli::Ps) -> anyhow::Result<()> {
    let container = Container::open(&ctx.root, &args.container_id)?;
    let state = container.current()?;
    let host = state.pid.filter(|_| state.status != Status::Stopped);
    let pids = guest_pids(&container.address(&state), state.status)?;
    print!("{}", render(host, &pids, &args.format)?);
    Ok(())
}

/// The container's processes, by their pids in the guest (none once it
/// stopped; a paused guest cannot answer).
pub fn pids(ctx: &Context, id: &str) -> anyhow::Result<Vec<u32>> {
    let container = Container::open(&ctx.root, id)?;
    let state = container.current()?;
    if state.status == Status::Paused {
        bail!("container {id} is paused: its processes cannot be listed");
    }
    guest_pids(&container.address(&state), state.status)
}

fn guest_pids(address: &Address, status: Status) -> anyhow::Result<Vec<u32>> {
    if !matches!(status, Status::Created | Status::Running) {
        return Ok(Vec::new());
    }
    match address.call(RequestBody::Processes)? {
        ResponseBody::Pids { pids } => Ok(pids),
        ResponseBody::Error { message } => bail!("{message}"),
        other => bail!(crate::guest::unexpected("ps", &other)),
    }
}

fn render(host: Option<i32>, guest: &[u32], format: &str) -> anyhow::Result<String> {
    match format {
        "json" => Ok(format!(
            "{}\n",
            serde_json::to_string(&host.into_iter().collect::<Vec<_>>())?
        )),
        "table" => {
            let mut out = String::from("PID\tGUEST_PID\n");
            if let Some(h) = host {
                for p in guest {
                    out.push_str(&format!("{h}\t{p}\n"));
                }
            }
            Ok(out)
        }
        other => bail!("invalid format {other:?}: use table or json"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::render(Some(9), &[1, 7], "json").unwrap(), "[9]\n");
        assert_eq!(super::render(None, &[], "json").unwrap(), "[]\n");
        assert_eq!(
            super::render(Some(9), &[1, 7], "table").unwrap(),
            "PID\tGUEST_PID\n9\t1\n9\t7\n"
        );
        assert!(super::render(None, &[], "yaml").is_err());
    }
}
