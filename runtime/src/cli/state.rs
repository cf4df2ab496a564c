//! `okvm state <id>`: the OCI state JSON.

use super::Context;
use crate::state::Container;

pub fn run(ctx: &Context, args: liboci_cli::State) -> anyhow::Result<()> {
    let state = Container::open(&ctx.root, &args.container_id)?.current()?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}
