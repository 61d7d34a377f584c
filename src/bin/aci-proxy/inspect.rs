//! `aci-proxy inspect`: what a gateway runs, what to pin, and whether it verifies.

use std::process::ExitCode;

use clap::Args;

/// The arguments of `aci-proxy inspect`.
#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The gateway's base URL, e.g. https://api.redpill.ai
    url: Option<String>,
}

pub(crate) fn run(args: &InspectArgs) -> ExitCode {
    eprintln!("aci-proxy inspect {:?}: not yet", args.url);
    ExitCode::FAILURE
}
