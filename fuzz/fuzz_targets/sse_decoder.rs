//! The SSE stream decryptor on arbitrary bytes, split at an arbitrary point: never panics, and
//! the split does not change the outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_aci::protocol::SseLimits;
use tower_aci::protocol::{Endpoint, ExchangeContext};
use tower_aci::protocol::{SecretKey, Suite};
use tower_aci::protocol::{StreamDecryptor, StreamOutput};

fn run(data: &[u8], cut: usize) -> Vec<Result<Vec<u8>, String>> {
    let ctx = ExchangeContext::new(
        Endpoint::ChatCompletions,
        SecretKey::from_bytes(Suite::X25519, &[7; 32]).unwrap(),
        "m",
        "n",
        1,
    );
    let mut dec = StreamDecryptor::new(
        ctx,
        SseLimits::default().max_line_bytes(4096).max_event_bytes(16384).max_event_lines(256),
    );
    let mut out = Vec::new();
    for part in [&data[..cut], &data[cut..]] {
        dec.push(part);
        loop {
            match dec.next_output() {
                Ok(Some(StreamOutput::Event(b))) => out.push(Ok(b.to_vec())),
                Ok(Some(StreamOutput::InBandError(b, _))) => out.push(Ok(b.to_vec())),
                Ok(Some(other)) => panic!("an output this target does not know: {other:?}"),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(format!("{:?}", e.kind())));
                    return out;
                }
            }
        }
    }
    out.push(dec.finish().map(|_| Vec::new()).map_err(|e| format!("{:?}", e.kind())));
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let data = &data[1..];
    let cut = cut.min(data.len());
    let whole = run(data, 0);
    if std::env::var_os("FUZZ_PRINT").is_some() {
        eprintln!("{:?}", whole.iter().map(|r| r.as_ref().map(|b| String::from_utf8_lossy(b))).collect::<Vec<_>>());
    }
    assert_eq!(run(data, cut), whole);
});
