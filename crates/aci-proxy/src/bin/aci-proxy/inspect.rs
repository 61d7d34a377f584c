//! `aci-proxy inspect`: what a gateway runs, what to pin, and whether it verifies.

use std::path::PathBuf;

use aci_proxy::inspect::{Inspection, inspect_gateway, inspect_report};
use clap::Args;

use crate::args::ServeArgs;
use crate::exit::Failure;

/// The arguments of `aci-proxy inspect`.
#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The gateway's base URL, e.g. https://api.redpill.ai (or --gateway; not with --report)
    url: Option<String>,
    /// Print the checks and values as JSON
    #[arg(long)]
    json: bool,
    /// Write an aci-proxy.toml holding the values found as pins (trusted on first use)
    #[arg(long, value_name = "FILE")]
    write_config: Option<PathBuf>,
    /// Inspect a saved report instead of fetching one (with --nonce)
    #[arg(long, value_name = "FILE", requires = "nonce")]
    report: Option<PathBuf>,
    /// The nonce the saved report was fetched with (64 hex)
    #[arg(long, value_name = "HEX", requires = "report")]
    nonce: Option<String>,
    /// Verify a saved report at this time (Unix seconds) instead of now, e.g. when it was fetched
    #[arg(long, value_name = "UNIX")]
    at: Option<u64>,
    /// The pins to verify under (and --pccs: where collateral comes from, default https://pccs.phala.network)
    #[command(flatten)]
    serve: ServeArgs,
}

fn inspect(args: &InspectArgs) -> Result<Inspection, Failure> {
    let mut config = args.serve.config()?;
    if let Some(url) = &args.url {
        config.gateway = Some(url.clone());
    }
    match (&args.report, &args.nonce) {
        (Some(file), Some(nonce)) => {
            let report = std::fs::read(file).map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            let nonce: [u8; 32] = const_hex::decode(nonce.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Failure::usage("--nonce must be 32 bytes of hex (64 characters)"))?;
            let now = args.at.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
            });
            Ok(inspect_report(&report, &nonce, now, &config, None))
        }
        _ => {
            if config.gateway.is_none() {
                return Err(Failure::usage(
                    "no gateway to inspect.\n  fix: aci-proxy inspect GATEWAY-URL\n  \
                     fix: or a saved report: aci-proxy inspect --report FILE --nonce HEX",
                ));
            }
            let rt = crate::runtime::runtime()?;
            rt.block_on(inspect_gateway(&config)).map_err(|e| Failure::of(&e, "cannot inspect: "))
        }
    }
}

/// Inspect, print, write the configuration if asked; `Ok` only when the report verified.
pub(crate) fn run(args: &InspectArgs) -> Result<(), Failure> {
    let found = inspect(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found.to_json()).unwrap_or_default());
    } else {
        print!("{found}");
    }
    if let Some(file) = &args.write_config {
        std::fs::write(file, found.config_toml()).map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
        eprintln!("aci-proxy: wrote {} (pins trusted on first use: check them)", file.display());
    }
    if found.verified { Ok(()) } else { Err(Failure::not_verified("the report did NOT verify under the pins given")) }
}
