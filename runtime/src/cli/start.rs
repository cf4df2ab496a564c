//! `okvm start`: let the created container process exec.

use anyhow::bail;
use okvm_protocol::{RequestBody, ResponseBody};

use super::Context;
use crate::state::{Action, Container, Status};

pub fn run(ctx: &Context, args: liboci_cli::Start) -> anyhow::Result<()> {
    start(ctx, &args.container_id)
}

pub fn start(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let container = Container::open(&ctx.root, id)?;
    let mut state = container.check(Action::Start)?;
    match container.address(&state).call(RequestBody::Start)? {
        ResponseBody::Done => {}
        ResponseBody::Error { message } => bail!("cannot start container {id}: {message}"),
        other => bail!(crate::guest::unexpected("start", &other)),
    }
    state.status = Status::Running;
    container.save(&state)?;
    Ok(())
}
