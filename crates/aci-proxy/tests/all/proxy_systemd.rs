//! The README's systemd recipe, followed without systemd: its install commands (parsed from the
//! README's fenced block, so the two cannot drift) run into a temporary root, then
//! `deploy/aci-proxy.service` is read as systemd reads it (`ExecStart`, `DynamicUser`,
//! `EnvironmentFile`, `Environment`, `StateDirectory`, `UMask`) and the real `aci-proxy` binary
//! is started as systemd would start it: an unprivileged uid of the `DynamicUser` range with no
//! supplementary groups, the environment file read by the manager (root), the state directory
//! owned by that uid, the unit's umask, working directory `/`. It must reach `GET /readyz`.
//!
//! Needs root (to install as root and drop to the service's uid), as CI runs it; anyone else
//! gets a loud skip.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The uid (and gid) the service runs as: the first of systemd's `DynamicUser` range
/// (61184–65519). No file outside the test's state directory belongs to it.
const SERVICE_UID: u32 = 61184;

/// The install block of the README before this test existed (commit 4e0acdd): a `0750 root`
/// directory and a `0640` config, which the `DynamicUser` cannot read. The control below runs
/// it through the same harness and must see the service fail, as it failed under systemd.
const OLD_INSTALL_BLOCK: &str = r#"cargo install tower-aci --features proxy && sudo install -m 0755 ~/.cargo/bin/aci-proxy /usr/local/bin/
sudo install -d -m 0750 /etc/aci-proxy && sudo install -m 0640 aci-proxy.toml /etc/aci-proxy/
printf 'ACI_API_KEY=%s\n' "$KEY" | sudo tee /etc/aci-proxy/env >/dev/null && sudo chmod 0600 /etc/aci-proxy/env
sudo install -m 0644 deploy/aci-proxy.service /etc/systemd/system/ && sudo systemctl daemon-reload
sudo systemctl enable --now aci-proxy && curl -fsS http://127.0.0.1:8787/readyz
"#;

/// The API key the README's `$KEY` holds.
const API_KEY: &str = "sk-systemd-test-0123456789";

/// What `aci-proxy inspect --write-config` leaves in the current directory, here for the crate's
/// local test gateway (its stub quote is accepted only with `local-test-gateway`), on an
/// ephemeral port so that tests can run side by side.
const CONFIG: &str = "# the test's stand-in for `aci-proxy inspect --write-config`\n\
                      local-test-gateway = true\nlisten = \"127.0.0.1:0\"\n";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this process is root (the owner of `/proc/self` is the effective uid).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "\n!!!!!!!!!! SKIPPED {test}: it must run as root (it installs as root and starts aci-proxy \
         as an unprivileged uid, as systemd does); CI runs it as root !!!!!!!!!!\n"
    );
    true
}

/// The fenced `sh` block after "**As a systemd service.**" in the README.
fn readme_install_block() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let at = readme.find("**As a systemd service.**").expect("the README has its systemd section");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("the systemd section has a ```sh block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the ```sh block is closed");
    rest[start..start + end].to_owned()
}

/// The temporary root: `/etc`, `/usr/local/bin`, `/var/lib` of the README and the unit live
/// under it.
struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        // The service's uid must reach the root, as it reaches `/` on a real host.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for ancestor in path.ancestors().skip(1) {
            let mode = std::fs::metadata(ancestor).unwrap().mode();
            assert!(
                mode & 0o001 != 0,
                "{} is not searchable by others: set TMPDIR to a directory every user can reach",
                ancestor.display()
            );
        }
        // What a host has before the README's commands run.
        for d in ["etc/systemd/system", "usr/local/bin", "var/lib"] {
            std::fs::create_dir_all(path.join(d)).unwrap();
        }
        Root { _dir: dir, path }
    }

    /// A host path of the README or the unit, moved under the root (`/etc`, `/usr/local/bin`
    /// and `/var/lib`; anything else is left alone).
    fn rewrite(&self, token: &str) -> String {
        // `--flag=/etc/…` forms too.
        if let Some((flag, path)) = token.split_once("=/") {
            return format!("{flag}={}", self.rewrite(&format!("/{path}")));
        }
        for prefix in ["/etc", "/usr/local/bin", "/var/lib"] {
            if token == prefix || token.starts_with(&format!("{prefix}/")) {
                return format!("{}{token}", self.path.display());
            }
        }
        token.to_owned()
    }
}

/// Run the install block as root into `root`: each `&&`-joined command and each element of a
/// pipeline loses its `sudo`; `cargo install` is replaced by the binary cargo built, the
/// `systemctl` and `curl` steps are what [`start_unit`] and the test do. Any other program
/// fails the test: a new step in the README must be taught here, never skipped silently.
fn run_install_block(block: &str, root: &Root) {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("aci-proxy.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // The worst case: written under umask 077. The install command alone decides the mode.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(work.path().join("deploy")).unwrap();
    std::fs::copy(repo().join("deploy/aci-proxy.service"), work.path().join("deploy/aci-proxy.service")).unwrap();

    let mut script = String::from("set -eu\n");
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        for construct in [";", "||", "`", "$("] {
            assert!(!line.contains(construct), "{construct:?} is not reproduced (only && and |): {line}");
        }
        let mut kept = Vec::new();
        for command in line.split(" && ") {
            let mut pipeline = Vec::new();
            for element in command.split(" | ") {
                let words: Vec<&str> = element.split_whitespace().collect();
                let words = if words.first() == Some(&"sudo") { &words[1..] } else { &words[..] };
                match words.first().copied() {
                    Some("cargo") => {
                        assert_eq!(words.get(1), Some(&"install"), "{element}");
                        pipeline.clear();
                        break;
                    }
                    Some("systemctl" | "curl") => {
                        pipeline.clear();
                        break;
                    }
                    Some("install" | "printf" | "tee" | "chmod" | "chown" | "mkdir") => {}
                    other => panic!("the README's install block runs {other:?}, which this test does not know: {line}"),
                }
                let rewritten: Vec<String> = words
                    .iter()
                    .map(|w| match *w {
                        "~/.cargo/bin/aci-proxy" => env!("CARGO_BIN_EXE_aci-proxy").to_owned(),
                        w => root.rewrite(w),
                    })
                    .collect();
                pipeline.push(rewritten.join(" "));
            }
            if !pipeline.is_empty() {
                kept.push(pipeline.join(" | "));
            }
        }
        if !kept.is_empty() {
            script.push_str(&kept.join(" && "));
            script.push('\n');
        }
    }
    let out = Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("KEY", API_KEY)
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "the install commands failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
}

/// The `[Service]` section of a unit file, in order (a key may repeat).
fn service_section(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "continued lines are not reproduced: {line}");
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
        if section == "[Service]" {
            out.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// Directives that restrict what the running service may do, or govern stopping and restarts:
/// systemd enforces them (`systemd-analyze security` rates them), none of them grants access to
/// a file, and none is needed to start. Anything not listed here or reproduced in
/// [`start_unit`] fails the test.
const NOT_REPRODUCED: &[&str] = &[
    "Type",
    "KillSignal",
    "TimeoutStopSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "RestrictSUIDSGID",
    "LockPersonality",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectProc",
    "ProcSubset",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "MemoryDenyWriteExecute",
    "RemoveIPC",
    "RestrictAddressFamilies",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
];

/// An environment file as systemd reads it: `KEY=VALUE` lines, `#` and `;` comments, optional
/// quotes around the value.
fn environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE in the environment file: {l}"));
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// A running service whose stderr (the journal) is collected.
struct Service {
    child: Child,
    journal: Arc<Mutex<String>>,
    state: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn journal(&self) -> String {
        self.journal.lock().unwrap().clone()
    }
}

/// Start the unit installed under `root` as systemd would: as root, read the `EnvironmentFile`,
/// create the `StateDirectory` owned by the service's uid, then exec `ExecStart` as that uid
/// (no supplementary groups) with the unit's umask and environment, in `/`.
fn start_unit(root: &Root) -> Service {
    let unit = std::fs::read_to_string(root.path.join("etc/systemd/system/aci-proxy.service"))
        .expect("the install commands installed the unit");
    let mut exec = None;
    let mut dynamic_user = false;
    let mut env = BTreeMap::from([(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )]);
    let mut env_files = Vec::new();
    let (mut state_dirs, mut state_mode, mut umask) = (Vec::new(), 0o755, "0022".to_owned());
    for (key, value) in service_section(&unit) {
        match key.as_str() {
            "ExecStart" => exec = Some(value),
            "DynamicUser" => dynamic_user = value == "yes",
            "Environment" => {
                let (k, v) = value.split_once('=').expect("Environment=KEY=VALUE");
                assert!(!v.contains(' '), "several assignments on one Environment= line are not reproduced: {value}");
                env.insert(k.to_owned(), v.to_owned());
            }
            "EnvironmentFile" => env_files.push(value),
            "StateDirectory" => state_dirs.extend(value.split_whitespace().map(str::to_owned)),
            "StateDirectoryMode" => state_mode = u32::from_str_radix(&value, 8).unwrap(),
            "UMask" => umask = value,
            k if NOT_REPRODUCED.contains(&k) => {}
            k => panic!("{k}= is in the unit but this test does not reproduce it: teach start_unit"),
        }
    }
    assert!(dynamic_user, "the unit runs as a DynamicUser (what this test reproduces)");
    // The manager reads the environment files as root, before it drops privileges; later
    // assignments win.
    for file in env_files {
        let (optional, file) = match file.strip_prefix('-') {
            Some(f) => (true, f.to_owned()),
            None => (false, file),
        };
        match std::fs::read_to_string(root.rewrite(&file)) {
            Ok(text) => env.extend(environment_file(&text)),
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("systemd would refuse to start: EnvironmentFile {file}: {e}"),
        }
    }
    // The state directories, owned by the service's user.
    for dir in &state_dirs {
        assert!(!dir.contains('/') && !dir.contains(".."), "a nested StateDirectory is not reproduced: {dir}");
        let path = root.path.join("var/lib").join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(state_mode)).unwrap();
    }
    if let Some(first) = state_dirs.first() {
        env.insert("STATE_DIRECTORY".to_owned(), format!("/var/lib/{first}"));
    }
    let exec = exec.expect("the unit has an ExecStart");
    assert!(!exec.contains('%') && !exec.contains('$'), "specifiers and variables are not reproduced: {exec}");
    assert!(!exec.contains('"') && !exec.contains('\''), "quoting is not reproduced: {exec}");
    let argv: Vec<String> = exec.split_whitespace().map(|w| root.rewrite(w)).collect();
    assert!(
        argv[0].starts_with(root.path.to_str().unwrap()),
        "ExecStart runs {} (prefixes such as + or ! are not reproduced)",
        argv[0]
    );
    assert!(umask.len() == 4 && umask.chars().all(|c| c.is_digit(8)), "UMask={umask}");

    let mut child = Command::new("/bin/sh")
        .args(["-c", &format!("umask {umask} && exec \"$@\""), "sh"])
        .args(&argv)
        .env_clear()
        .envs(&env)
        .current_dir("/")
        // std drops the supplementary groups (setgroups(0)) before setuid.
        .uid(SERVICE_UID)
        .gid(SERVICE_UID)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service starts");
    let stderr = child.stderr.take().unwrap();
    let journal = Arc::new(Mutex::new(String::new()));
    let sink = journal.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut journal = sink.lock().unwrap();
            journal.push_str(&line);
            journal.push('\n');
        }
    });
    let state = state_dirs.first().map(|d| root.path.join("var/lib").join(d)).unwrap_or_default();
    Service { child, journal, state }
}

/// Wait (bounded) for the service to say where it listens, or to exit.
fn listening(service: &mut Service) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let journal = service.journal();
        if let Some(at) = journal.find("listening on http://") {
            let rest = &journal[at + "listening on http://".len()..];
            return Ok(rest[..rest.find("/v1").unwrap()].to_owned());
        }
        if let Ok(Some(status)) = service.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!("aci-proxy exited ({status}): {}", service.journal()));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "aci-proxy did not listen: {journal}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(path: &Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.mode() & 0o7777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_install_commands_and_the_unit_start_aci_proxy_as_a_dynamic_user_that_reaches_readyz() {
    if skip_unless_root("the systemd install test") {
        return;
    }
    let root = Root::new();
    run_install_block(&readme_install_block(), &root);

    // What the commands left: the API key is root's alone, nothing the service reads is its to
    // change.
    let (owner, env_mode) = mode(&root.path.join("etc/aci-proxy/env"));
    assert!(owner == 0 && env_mode & 0o077 == 0, "the API key file is {env_mode:o}, owned by {owner}");
    for path in ["etc/aci-proxy", "etc/aci-proxy/aci-proxy.toml", "usr/local/bin/aci-proxy"] {
        let (owner, m) = mode(&root.path.join(path));
        assert!(owner == 0 && m & 0o022 == 0, "{path} is {m:o}, owned by {owner}");
    }

    let mut service = start_unit(&root);
    let addr = listening(&mut service).unwrap_or_else(|e| panic!("the service did not start: {e}"));
    let client = reqwest::Client::new();
    let ready = client.get(format!("http://{addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(body["ready"], true, "{body}");

    // The audit file is the service user's, in its state directory, under the unit's umask;
    // a chat's receipt lands in it.
    let audit = service.state.join("receipts.jsonl");
    let (owner, audit_mode) = mode(&audit);
    assert!(owner == SERVICE_UID && audit_mode & 0o077 == 0, "the audit file is {audit_mode:o}, owned by {owner}");
    let chat = json!({"model": "demo-model", "messages": [{"role": "user", "content": "hello from systemd"}]});
    let res = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "You said: hello from systemd");
    let started = Instant::now();
    while !std::fs::read_to_string(&audit).unwrap_or_default().contains("\"receipt\"") {
        assert!(started.elapsed() < Duration::from_secs(30), "no receipt archived: {}", service.journal());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // `systemctl stop`: SIGTERM, a clean exit well within TimeoutStopSec.
    let pid = service.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no exit after SIGTERM: {}", service.journal());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}: {}", service.journal());
}

/// The control: the same harness on the README's old install commands (a `0750 root` directory,
/// a `0640` config) fails as the service failed under systemd, unable to read its config. It
/// shows the harness really runs the service unprivileged.
#[test]
fn the_old_install_commands_leave_a_config_the_dynamic_user_cannot_read() {
    if skip_unless_root("the systemd install control") {
        return;
    }
    let root = Root::new();
    run_install_block(OLD_INSTALL_BLOCK, &root);
    let mut service = start_unit(&root);
    let err = listening(&mut service).expect_err("the service started with the old modes");
    assert!(err.contains("aci-proxy.toml: Permission denied"), "{err}");
}
