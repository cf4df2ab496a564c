//! `okvm ps`: the container's processes, as guest pids (they live in the VM,
//! so host tools cannot see them).

use anyhow::bail;
use okvm_protocol::{RequestBody, ResponseBody};

use super::Context;
use crate::guest::Client;
use crate::sandbox::VSOCK;
use crate::state::{Container, Status};

pub fn run(ctx: &Context, args: liboci_cli::Ps) -> anyhow::Result<()> {
    let container = Container::open(&ctx.root, &args.container_id)?;
    let state = container.current()?;
    let pids = if matches!(state.status, Status::Created | Status::Running) {
        let mut client = Client::connect(&container.dir.join(VSOCK))?;
        match client.request(RequestBody::Processes)? {
            ResponseBody::Pids { pids } => pids,
            ResponseBody::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from the guest to ps: {other:?}"),
        }
    } else {
        Vec::new()
    };
    print!("{}", render(&pids, &args.format)?);
    Ok(())
}

fn render(pids: &[u32], format: &str) -> anyhow::Result<String> {
    match format {
        "json" => Ok(format!("{}\n", serde_json::to_string(pids)?)),
        "table" => {
            let mut out = String::from("PID\n");
            for p in pids {
                out.push_str(&format!("{p}\n"));
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
        assert_eq!(super::render(&[1, 7], "json").unwrap(), "[1,7]\n");
        assert_eq!(super::render(&[1], "table").unwrap(), "PID\n1\n");
        assert!(super::render(&[], "yaml").is_err());
    }
}
