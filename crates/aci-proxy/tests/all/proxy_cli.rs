//! The `aci-proxy` command line as an operator meets it, with the real binary: the `serve`
//! subcommand beside the bare form, the configuration file printed and read back, keys spelt
//! like the flags, what happens to a client's bearer token, the exit status of every
//! subcommand, and `/metrics`.

use std::path::Path;
use std::time::Duration;

use aci_proxy::ProxyConfig;
use aci_test_gateway::{GatewayConfig, TestGateway};
use serde_json::Value;

use crate::proxy_binary::{chat, command, printed_config, receipt_lines, run_to_exit, start_with, until};

const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004";
const KMS_ROOT: &str = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1";
const APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";

/// One set of boot measurements (MRTD, RTMR0–2), 48 bytes of hex each.
fn boot(byte: &str) -> String {
    let m = byte.repeat(48);
    format!("{m},{m},{m},{m}")
}

/// A full set of pins, as flags (the sound combination, plus the checks beside it).
fn pin_flags() -> Vec<String> {
    [
        "--compose-hash",
        COMPOSE_HASH,
        "--boot-measurements",
        &boot("ab"),
        "--boot-measurements",
        &boot("cd"),
        "--kms-identity",
        KMS_IDENTITY,
        "--app-id",
        APP_ID,
        "--kms-root",
        KMS_ROOT,
        "--os-image-hash",
        "de9c74f0c85d0820ce075cb4a99f8e39f7b681be632907c5bf8bdc95ea72feb9",
        "--require-production-os",
        "--refuse-advisory",
        "INTEL-SA-00837,INTEL-SA-01036",
        "--tcb-status",
        "UpToDate",
        "--key-id",
        "dstack-kms-e2ee-v1",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn stdout_of(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = command(args, envs).output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// `--help` lists the subcommands and the exit statuses; each subcommand's `--help` shows the
/// same exit statuses, and `serve --help` the flags.
#[test]
fn help_lists_the_subcommands_and_every_subcommand_documents_the_same_exit_statuses() {
    let (code, help, _) = stdout_of(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for sub in ["serve", "inspect", "verify-receipts", "config"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(sub)), "{sub} missing: {help}");
    }
    assert!(help.contains("aci-proxy [SERVE FLAGS]   (the same as aci-proxy serve [SERVE FLAGS])"), "{help}");
    let statuses = |text: &str| -> Vec<String> {
        let at = text.find("Exit status").unwrap_or_else(|| panic!("no exit statuses: {text}"));
        text[at..].lines().map(str::to_owned).collect()
    };
    let top = statuses(&help);
    for (code, what) in [("0", "done"), ("1", "not verified"), ("2", "usage or configuration"), ("3", "runtime")] {
        assert!(top.iter().any(|l| l.trim_start().starts_with(&format!("{code}  {what}"))), "{code}: {top:?}");
    }
    for sub in ["serve", "inspect", "verify-receipts", "config"] {
        let (code, text, _) = stdout_of(&[sub, "--help"], &[]);
        assert_eq!(code, Some(0), "{sub}");
        assert_eq!(statuses(&text), top, "{sub}");
    }
    let (_, serve, _) = stdout_of(&["serve", "--help"], &[]);
    for flag in ["--gateway", "--compose-hash", "--cache-salt-env", "--api-key-env", "--config"] {
        assert!(serve.contains(flag), "{flag} missing from serve --help");
    }
}

/// `aci-proxy serve` serves, the bare `aci-proxy [FLAGS]` too (compatibility), and both stop
/// with status 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_a_subcommand_and_the_bare_flags_still_serve() {
    let http = reqwest::Client::new();
    for prefix in [&["serve"][..], &[]] {
        let args = [prefix, &["--local-test-gateway", "--listen", "127.0.0.1:0"]].concat();
        let mut proxy = start_with(&args, &[]);
        let res = http.post(proxy.url("/v1/chat/completions")).body(chat("both ways", false).to_string()).send();
        let answer: Value = serde_json::from_str(&res.await.unwrap().text().await.unwrap()).unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "You said: both ways", "{prefix:?}");
        proxy.sigterm();
        assert_eq!(proxy.wait(Duration::from_secs(30)).code(), Some(0), "{prefix:?}: {}", proxy.log());
    }
    // A subcommand and the bare serve flags do not mix.
    let (code, _, err) = stdout_of(&["--listen", "127.0.0.1:0", "config"], &[]);
    assert_eq!(code, Some(2), "{err}");
}

/// `aci-proxy config` prints a TOML file that `--config` reads back unchanged: print, read,
/// print gives the same text, the configuration read equals the first, and no secret is in it
/// (the keys and the salt are named by their variables).
#[test]
fn config_prints_toml_that_config_reads_back_unchanged_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    let secrets = [
        ("ACI_API_KEY", "sk-live-never-printed-0001"),
        ("ACI_CLIENT_KEY", "ck-never-printed-0123456789"),
        ("ACI_CACHE_SALT", "salt-never-printed-0123456789"),
    ];
    let mut args: Vec<String> = [
        "config",
        "--gateway",
        "https://api.redpill.ai/",
        "--listen",
        "0.0.0.0:8788",
        "--client-key-env",
        "ACI_CLIENT_KEY",
        "--require-client-key",
        "--cache-salt-env",
        "ACI_CACHE_SALT",
        "--ops-listen",
        "127.0.0.1:9091",
        "--allow-origin",
        "https://app.example,http://localhost:3000",
        "--receipts",
        "before-release",
        "--audit-file",
        audit.to_str().unwrap(),
        "--max-request-body",
        "1048576",
        "--tls-pin-only",
        "--pccs",
        "https://pccs.example",
        "--request-timeout",
        "10m",
        "--shutdown-timeout",
        "45",
        "--metrics=false",
        "--log-format",
        "json",
        "--require-exact-keyset",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(pin_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, first, err) = stdout_of(&args, &secrets);
    assert_eq!(code, Some(0), "{err}");
    for (_, value) in secrets {
        assert!(!first.contains(value), "a secret was printed: {first}");
    }
    for key in
        ["api-key-env = \"ACI_API_KEY\"", "client-key-env = \"ACI_CLIENT_KEY\"", "cache-salt-env = \"ACI_CACHE_SALT\""]
    {
        assert!(first.contains(key), "{key} missing: {first}");
    }

    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &first).unwrap();
    let (code, second, err) = stdout_of(&["config", "--config", file.to_str().unwrap()], &secrets);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(second, first, "print -> read -> print changed the file");

    let c = printed_config(first.as_bytes());
    assert_eq!(format!("{c:?}"), format!("{:?}", printed_config(second.as_bytes())));
    // And it is the configuration the flags gave, every setting of it.
    assert_eq!(c.gateway.as_deref(), Some("https://api.redpill.ai/"));
    assert_eq!(c.listen.to_string(), "0.0.0.0:8788");
    assert_eq!((c.api_key_env.as_str(), c.client_key_env.as_deref()), ("ACI_API_KEY", Some("ACI_CLIENT_KEY")));
    assert!(c.require_client_key && c.tls_pin_only && c.require_exact_keyset && !c.metrics);
    assert_eq!(c.cache_salt_env.as_deref(), Some("ACI_CACHE_SALT"));
    assert_eq!(c.ops_listen, Some("127.0.0.1:9091".parse().unwrap()));
    assert_eq!(c.allow_origins, ["https://app.example", "http://localhost:3000"]);
    assert_eq!(c.receipts, aci_proxy::ReceiptMode::BeforeRelease);
    assert_eq!(c.audit_file.as_deref(), Some(audit.as_path()));
    assert_eq!((c.max_request_body, c.pccs.as_deref()), (1_048_576, Some("https://pccs.example")));
    assert_eq!((c.request_timeout, c.shutdown_timeout), (Duration::from_secs(600), Duration::from_secs(45)));
    assert_eq!(c.log_format, aci_proxy::LogFormat::Json);
    let p = &c.pins;
    assert_eq!(
        (&p.compose_hashes, &p.kms_identities),
        (&vec![COMPOSE_HASH.to_owned()], &vec![KMS_IDENTITY.to_owned()])
    );
    assert_eq!((&p.app_ids, &p.kms_roots), (&vec![APP_ID.to_owned()], &vec![KMS_ROOT.to_owned()]));
    assert_eq!(p.boot_measurements.len(), 2);
    assert_eq!(
        (p.boot_measurements[0].rtmr2.as_str(), p.boot_measurements[1].mrtd.as_str()),
        (&*"ab".repeat(48), &*"cd".repeat(48))
    );
    assert_eq!(p.refused_advisories, ["INTEL-SA-00837", "INTEL-SA-01036"]);
    assert!(p.require_production_os && p.os_image_hashes.len() == 1 && p.key_id.is_some());
    c.policy().expect("the pins read back make a policy");
}

/// The file printed by `config` is what `serve --config` runs with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_the_file_config_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text, err) = stdout_of(&["config", "--local-test-gateway", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let file = dir.path().join("aci-proxy.toml");
    std::fs::write(&file, text).unwrap();
    let mut proxy = start_with(&["serve", "--config", file.to_str().unwrap()], &[]);
    let res = reqwest::get(proxy.url("/readyz")).await.unwrap();
    assert_eq!(res.status(), 200);
    proxy.sigterm();
    assert_eq!(proxy.wait(Duration::from_secs(30)).code(), Some(0));
}

/// A file that spells a key otherwise than its flag (the names before this release, `_` for
/// `-`, a pin outside `[pins]`) is refused with status 2, naming the key to write instead.
#[test]
fn a_key_spelt_otherwise_than_its_flag_is_refused_naming_the_key_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[pins]\ncompose_hashes = [\"aa\"]\n",
            "line 2: `compose_hashes` is spelt `compose-hash`",
            "`compose-hash` in the `[pins]` table",
        ),
        (
            "[pins]\nkms_identities = [\"aa\"]\n",
            "`kms_identities` is spelt `kms-identity`",
            "`kms-identity` in the `[pins]`",
        ),
        (
            "[pins]\nrefused_advisories = [\"x\"]\n",
            "`refused_advisories` is spelt `refuse-advisory`",
            "`refuse-advisory` in the `[pins]`",
        ),
        (
            "[[pins.boot_measurements]]\nmrtd = \"a\"\n",
            "`boot_measurements` is spelt `boot-measurements`",
            "`[[pins.boot-measurements]]`",
        ),
        (
            "allow_origins = [\"https://a.example\"]\n",
            "`allow_origins` is spelt `allow-origin`",
            "`allow-origin` at the top",
        ),
        ("api_key_env = \"K\"\n", "`api_key_env` is spelt `api-key-env`", "`api-key-env` at the top"),
        (
            "require_client_key = true\n",
            "`require_client_key` is spelt `require-client-key`",
            "`require-client-key` at the top",
        ),
        ("audit_file = \"a\"\n", "`audit_file` is spelt `audit-file`", "`audit-file` at the top"),
        (
            "compose-hash = [\"aa\"]\n",
            "line 1: `compose-hash` is not in its place",
            "`compose-hash` in the `[pins]` table",
        ),
        ("[pins]\nlisten = \"127.0.0.1:1\"\n", "`listen` is not in its place", "`listen` at the top of the file"),
    ];
    let file = dir.path().join("old.toml");
    for (toml, what, fix) in cases {
        std::fs::write(&file, toml).unwrap();
        for sub in ["config", "serve"] {
            let (status, err) = run_to_exit(&[sub, "--config", file.to_str().unwrap()], &[]);
            assert_eq!(status.code(), Some(2), "{sub} {toml}: {err}");
            assert!(err.contains(what), "{toml}: {err}");
            assert!(err.contains(&format!("fix: write {fix}")), "{toml}: {err}");
        }
        let e = ProxyConfig::from_toml(toml).unwrap_err();
        assert_eq!(e.kind(), tower_aci::ErrorKind::Config);
        assert!(e.to_string().contains(what), "{e}");
    }
    // A key no spelling knows: serde's message lists the keys it expects.
    std::fs::write(&file, "nonsense = 1\n").unwrap();
    let (status, err) = run_to_exit(&["config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("unknown field `nonsense`") && !err.contains("`compose-hash`"), "{err}");
    assert!(err.contains("`api-key-env`"), "{err}");
}

/// The start-up says what happens to a client's own `Authorization`: with the API key set it
/// is dropped for the key; without it, it is forwarded; with a client key, nothing is. The
/// status page says the same, and the line is what the proxy does (see
/// `proxy_exposure::the_api_key_never_goes_to_the_attestation_passthrough`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_says_what_the_proxy_does_with_a_clients_bearer_token() {
    let base = ["serve", "--local-test-gateway", "--listen", "127.0.0.1:0"];
    let client_key = [&base[..], &["--client-key-env", "TEST_CLIENT_KEY"]].concat();
    /// Arguments, environment, the source `GET /aci/status` names, the start-up line.
    type Case<'a> = (&'a [&'a str], Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: [Case; 3] = [
        (
            &base,
            vec![],
            "client",
            "aci-proxy: ACI_API_KEY is unset: a client's own `Authorization` header (its bearer token) is forwarded \
             to the gateway (inference, /v1/models and receipts only, never the attestation endpoint), over plain \
             HTTP to the loopback gateway; a request without one reaches the gateway with no API key",
        ),
        (
            &base,
            vec![("ACI_API_KEY", "sk-test-key-0001")],
            "api-key",
            "aci-proxy: the gateway gets the API key of ACI_API_KEY (inference, /v1/models and receipts only, never \
             the attestation endpoint), over plain HTTP to the loopback gateway; a client's own Authorization header \
             is dropped",
        ),
        (
            &client_key,
            vec![("TEST_CLIENT_KEY", "ck-0123456789abcdef")],
            "none",
            "aci-proxy: ACI_API_KEY is unset and clients authenticate with the client key, which is never \
             forwarded: requests reach the gateway with no API key until ACI_API_KEY is set",
        ),
    ];
    for (args, envs, source, line) in cases {
        let mut proxy = start_with(args, &envs);
        let log = proxy.log();
        assert!(log.lines().any(|l| l == line), "{source}: no line {line:?} in\n{log}");
        assert!(!log.contains("sk-test-key-0001") && !log.contains("ck-0123456789abcdef"), "{log}");
        let res = reqwest::Client::new().get(proxy.url("/aci/status")).bearer_auth("ck-0123456789abcdef").send();
        let status: Value = serde_json::from_str(&res.await.unwrap().text().await.unwrap()).unwrap();
        assert_eq!(status["authorization"]["source"], source, "{status}");
        proxy.sigterm();
        proxy.wait(Duration::from_secs(30));
    }
}

/// `GET /metrics` of the binary: it installs the Prometheus recorder (the library no longer
/// does by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics() {
    let mut proxy = start_with(&["serve", "--local-test-gateway", "--listen", "127.0.0.1:0"], &[]);
    let http = reqwest::Client::new();
    let res = http.post(proxy.url("/v1/chat/completions")).body(chat("counted", false).to_string()).send();
    assert_eq!(res.await.unwrap().status(), 200);
    let text = http.get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("aci_proxy_exchanges_total{"), "{text}");
    assert!(text.contains("# HELP aci_e2ee_requests_total "), "{text}");
    proxy.sigterm();
    proxy.wait(Duration::from_secs(30));
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `serve`: 1 when the gateway's report fails the pins, 2 for a configuration error, 3 when
/// the gateway cannot be reached or the address is taken (0 on SIGTERM: above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_1_when_not_verified_2_on_configuration_3_on_runtime_errors() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let serve = |gateway: &str, extra: &[&str]| {
        let pins = pin_flags();
        let pins: Vec<&str> = pins.iter().map(String::as_str).collect();
        let args = [&["serve", "--listen", "127.0.0.1:0", "--gateway", gateway][..], &pins, extra].concat();
        let (status, err) = run_to_exit(&args, &[]);
        (status.code(), err)
    };
    // The test gateway's stub quote is no genuine TDX quote: the pins refuse it.
    let (code, err) = tokio::task::spawn_blocking({
        let url = gw.base_url();
        move || serve(&url, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("aci-proxy: cannot start: the policy requires hardware")), "{err}");

    let unreachable = format!("http://127.0.0.1:{}", closed_port());
    let (code, err) = serve(&unreachable, &[]);
    assert_eq!(code, Some(3), "{err}");

    let (code, err) = serve(&unreachable, &["--cache-salt-env", "TEST_ACI_UNSET_SALT"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--cache-salt-env TEST_ACI_UNSET_SALT: the environment variable TEST_ACI_UNSET_SALT is unset"),
        "{err}"
    );
    let (status, err) = run_to_exit(&["serve", "--gateway", "https://gateway.invalid"], &[]);
    assert_eq!(status.code(), Some(2), "unpinned: {err}");
    let (status, err) = run_to_exit(&["serve", "--receipts", "sometimes"], &[]);
    assert_eq!(status.code(), Some(2), "a bad value: {err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let (status, err) = run_to_exit(&["serve", "--local-test-gateway", "--listen", &at], &[]);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("cannot listen on {at}")), "{err}");
}

/// `inspect`: 0 when the report verified under the pins given, 1 when not, 2 for a usage error,
/// 3 when the gateway cannot be reached or the file cannot be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_exits_0_verified_1_not_verified_2_usage_3_runtime() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let url = gw.base_url();
    let dir = tempfile::tempdir().unwrap();
    let run = move |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, err) = run_to_exit(&[&["inspect"][..], &args].concat(), &[]);
        (status.code(), err)
    };
    let blocking = |args: Vec<String>| tokio::task::spawn_blocking(move || run(args));
    // The stub quote verifies only under the local test gateway's policy.
    let (code, err) = blocking(vec![url.clone(), "--local-test-gateway".into()]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let mut pinned = vec![url.clone()];
    pinned.extend(pin_flags());
    let (code, err) = blocking(pinned).await.unwrap();
    assert_eq!(code, Some(1), "{err}");
    let capture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/real_tdx_report_2026-06.json");
    let nonce = "0000000000000000000000000000000000000000000000000000000000000001";
    let (code, err) = run(vec!["--report".into(), capture.into(), "--nonce".into(), nonce.into()]);
    assert_eq!(code, Some(1), "{err}");
    for usage in [
        vec!["--report".to_owned(), capture.to_owned(), "--nonce".to_owned(), "00".to_owned()],
        vec!["--report".to_owned(), "/nonexistent/report.json".to_owned(), "--nonce".to_owned(), nonce.to_owned()],
        vec![],
        vec!["--no-such-flag".to_owned()],
    ] {
        let (code, err) = run(usage.clone());
        assert_eq!(code, Some(2), "{usage:?}: {err}");
    }
    let (code, err) = blocking(vec![format!("http://127.0.0.1:{}", closed_port())]).await.unwrap();
    assert_eq!(code, Some(3), "{err}");
    let unwritable = dir.path().join("no-such-dir").join("aci-proxy.toml");
    let (code, err) = blocking(vec![
        url,
        "--local-test-gateway".into(),
        "--write-config".into(),
        unwritable.to_str().unwrap().into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(3), "{err}");
}

/// `config`: 0 when printed, 2 for a file it cannot read or use.
#[test]
fn config_exits_0_printed_2_on_a_bad_file() {
    let (code, _, err) = stdout_of(&["config"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let (status, err) = run_to_exit(&["config", "--config", "/nonexistent/aci-proxy.toml"], &[]);
    assert_eq!(status.code(), Some(2), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "gateway = \n").unwrap();
    let (status, err) = run_to_exit(&["config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(2), "{err}");
}

/// `verify-receipts`: 0 when every line verified, 1 when one did not, 2 for a missing file or
/// an unusable policy. The audit file is the real binary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_receipts_exits_0_verified_1_not_verified_2_usage() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    let mut proxy = start_with(
        &["serve", "--local-test-gateway", "--listen", "127.0.0.1:0", "--audit-file", audit.to_str().unwrap()],
        &[],
    );
    let res = reqwest::Client::new().post(proxy.url("/v1/chat/completions")).body(chat("audited", false).to_string());
    assert_eq!(res.send().await.unwrap().status(), 200);
    until("the receipt archived", Duration::from_secs(30), || receipt_lines(&audit).len() == 1).await;
    proxy.sigterm();
    assert_eq!(proxy.wait(Duration::from_secs(30)).code(), Some(0));

    let verify = |file: &Path, extra: &[&str]| {
        let args = [&["verify-receipts", file.to_str().unwrap()][..], extra].concat();
        let (status, err) = run_to_exit(&args, &[]);
        (status.code(), err)
    };
    assert_eq!(verify(&audit, &["--local-test-gateway"]).0, Some(0));
    // The receipt's signed text with one character changed: its signature no longer verifies.
    let text = std::fs::read_to_string(&audit).unwrap();
    let tampered = dir.path().join("tampered.jsonl");
    let mut lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let receipt = lines.iter_mut().find(|l| l["type"] == "receipt").unwrap();
    let signed = receipt["receipt"].as_str().unwrap().to_owned();
    let at = signed.find("sha256:").expect("the receipt names a hash") + "sha256:".len();
    let digit = if &signed[at..=at] == "0" { "1" } else { "0" };
    receipt["receipt"] = Value::String(format!("{}{digit}{}", &signed[..at], &signed[at + 1..]));
    std::fs::write(&tampered, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let (code, err) = verify(&tampered, &["--local-test-gateway"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(verify(&dir.path().join("missing.jsonl"), &["--local-test-gateway"]).0, Some(2));
    // No pins: the policy cannot be built.
    assert_eq!(verify(&audit, &[]).0, Some(2));
}

/// The README's example configuration file is one `--config` reads, and its pins make a policy.
#[test]
fn the_readmes_example_file_reads() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").expect("the README shows a configuration file") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let config = ProxyConfig::from_toml(&readme[start..end]).unwrap();
    assert_eq!(config.cache_salt_env.as_deref(), Some("ACI_CACHE_SALT"));
    config.policy().unwrap();
}
