//! Templates: one cold boot of the agent VM, snapshotted; then clones, each
//! a `husk vm --from-template` process of its own with its own vsock
//! socket and share, each agent answering, running a busybox container,
//! and made its own (wall clock from the host, entropy reseeded); each
//! clone's first client takes over the connection the template kept. A
//! 2-vCPU template without that connection restores the same way (its
//! clones get a vsock transport reset and the agent's listener survives
//! it); templates that do not fit (other
//! kernel, image or husk version, truncated or corrupted files, not a
//! template at all) are refused before anything runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::agent::{ctx, read_to_end, spec, wait};
use common::{guest_assets, kvm_or_skip};
use husk_agent_protocol::agent;
use husk_runtime::agent::AgentClient;
use husk_runtime::agent_client::{connect_agent, AGENT_VSOCK_PORT};

const TAG: &str = "husk-shared";

fn husk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_husk"))
}

/// `husk template create` from the agent image, into `out`; with
/// `keep_agent_connection` the template holds an open agent connection for
/// each clone's first client, otherwise clones get a vsock transport reset.
fn make_template(out: &Path, cpus: u8, keep_agent_connection: bool) {
    let a = guest_assets();
    let mut cmd = husk();
    cmd.args(["template", "create", "--cpus", &cpus.to_string()])
        .arg("--kernel")
        .arg(&a.kernel)
        .arg("--pmem")
        .arg(&a.agent_image)
        .arg("--out")
        .arg(out);
    if !keep_agent_connection {
        cmd.arg("--no-agent-connection");
    }
    assert!(
        cmd.status().unwrap().success(),
        "husk template create failed"
    );
}

/// How many guest vsock connections the template at `dir` holds.
fn saved_vsock_connections(dir: &Path) -> usize {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let found: Vec<usize> = state["transports"]
        .as_array()
        .expect("state.json has transports")
        .iter()
        .filter_map(|t| t["device_state"]["Vsock"]["connections"].as_array())
        .map(Vec::len)
        .collect();
    assert!(
        found.len() <= 1,
        "more than one vsock device state: {found:?}"
    );
    found.first().copied().unwrap_or(0)
}

/// A VM restored from `template` in its own process, with a busybox
/// rootfs in its share; killed when dropped.
struct Clone {
    child: Child,
    uds: PathBuf,
    dir: PathBuf,
}

impl Clone {
    fn start(template: &Path, dir: PathBuf) -> Self {
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let built = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/build-busybox-rootfs.sh"
        ))
        .arg(share.join("c/rootfs"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
        assert!(built.success());
        let uds = dir.join("v.sock");
        let child = husk()
            .args(["vm", "--from-template"])
            .arg(template)
            .arg("--vsock")
            .arg(format!("cid=3,uds={}", uds.display()))
            .arg("--fs")
            .arg(format!("{TAG}={}", share.display()))
            .arg("--console")
            .arg(dir.join("console"))
            .spawn()
            .unwrap();
        Self { child, uds, dir }
    }

    fn agent(&mut self) -> AgentClient {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(c) = connect_agent(&self.uds, AGENT_VSOCK_PORT, Duration::from_secs(30)) {
                return c;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the clone's husk exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the clone's agent never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Clone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// What a clone's container saw.
struct Seen {
    /// Host clock just before the container started, and once its output was in.
    host_before: f64,
    host_after: f64,
    /// The guest's wall clock as the container read it (adjtimex).
    guest: f64,
    random: String,
}

impl Seen {
    /// The guest's clock lies within the host's interval, give or take 1 s.
    fn assert_clock(&self, who: &str) {
        assert!(
            self.host_before - 1.0 <= self.guest && self.guest <= self.host_after + 1.0,
            "{who}'s wall clock {:.3} is not within 1 s of the host's {:.3}..{:.3}",
            self.guest,
            self.host_before,
            self.host_after
        );
    }
}

/// Check, Restored, CreateSandbox, then a container printing the guest's
/// wall clock (adjtimex: seconds and microseconds) and 16 random bytes.
fn become_and_run(client: &AgentClient, name: &str) -> Seen {
    let health = client.check(ctx(), &agent::CheckRequest::new()).unwrap();
    assert_eq!(
        health.status.enum_value(),
        Ok(agent::health_check_response::ServingStatus::SERVING)
    );
    let mut entropy = vec![0u8; 64];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut entropy,
    )
    .unwrap();
    let restored = agent::RestoredRequest {
        wall_clock_ns: now_ns(),
        entropy,
        ..Default::default()
    };
    client.restored(ctx(), &restored).unwrap();
    let sandbox = agent::CreateSandboxRequest {
        sandbox_id: name.into(),
        shared_fs_tag: TAG.into(),
        ..Default::default()
    };
    client.create_sandbox(ctx(), &sandbox).unwrap();
    let args = r#"["sh", "-c", "adjtimex | grep time.tv_; echo rand $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ')"]"#;
    let rootfs = agent::Rootfs {
        path: "/run/husk/shared/c/rootfs".into(),
        ..Default::default()
    };
    let create = agent::CreateContainerRequest {
        container_id: "c".into(),
        oci_spec: spec(args, "{}"),
        rootfs: Some(rootfs).into(),
        ..Default::default()
    };
    client.create_container(ctx(), &create).unwrap();
    let host_before = now_ns() as f64 / 1e9;
    let start = agent::StartContainerRequest {
        container_id: "c".into(),
        ..Default::default()
    };
    client.start_container(ctx(), &start).unwrap();
    let out = read_to_end(client, "c", false);
    let host_after = now_ns() as f64 / 1e9;
    assert_eq!(wait(client, "c"), 0, "{out}");
    let field = |name: &str| -> f64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    let guest = field("time.tv_sec:") + field("time.tv_usec:") / 1e6;
    let random = out
        .lines()
        .find_map(|l| l.strip_prefix("rand "))
        .unwrap_or_else(|| panic!("no random bytes in {out:?}"))
        .to_string();
    Seen {
        host_before,
        host_after,
        guest,
        random,
    }
}

#[test]
fn clones_of_a_template_are_each_their_own() {
    if !kvm_or_skip("clones_of_a_template_are_each_their_own") {
        return;
    }
    let base = std::env::temp_dir().join(format!("husk-templates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let template = base.join("t1");
    make_template(&template, 1, true);
    assert_eq!(saved_vsock_connections(&template), 1);

    let mut clones: Vec<Clone> = (0..3)
        .map(|i| Clone::start(&template, base.join(format!("clone{i}"))))
        .collect();
    let clients: Vec<AgentClient> = clones.iter_mut().map(Clone::agent).collect();
    let runs: Vec<Seen> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| s.spawn(move || become_and_run(c, &format!("pod{i}"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, seen) in runs.iter().enumerate() {
        seen.assert_clock(&format!("clone {i}"));
    }
    // Each first client took over the template's connection; a new one
    // is a real handshake with the guest's listener.
    let again = clones[0].agent();
    again.check(ctx(), &agent::CheckRequest::new()).unwrap();
    drop(again);
    for i in 0..3 {
        for j in i + 1..3 {
            assert_ne!(
                runs[i].random, runs[j].random,
                "clones {i} and {j} drew the same random bytes"
            );
        }
    }
    drop(clones);
    refusals(&template, &base);

    let two = base.join("t2");
    make_template(&two, 2, false);
    assert_eq!(saved_vsock_connections(&two), 0);
    let mut clone = Clone::start(&two, base.join("clone-2cpu"));
    let client = clone.agent();
    become_and_run(&client, "pod2").assert_clock("the 2-vCPU clone");
    drop(clone);
    std::fs::remove_dir_all(&base).unwrap();
}

/// `husk vm --from-template` on a template that does not fit: an error
/// naming what differs, and the process gone.
fn refusals(template: &Path, base: &Path) {
    let a = guest_assets();
    let refused = |t: &Path, extra: &[&str], needle: &str| {
        let out = husk()
            .args(["vm", "--from-template"])
            .arg(t)
            .args([
                "--vsock",
                &format!("cid=3,uds={}", base.join("r.sock").display()),
            ])
            .args(["--fs", &format!("{TAG}={}", base.display())])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{needle}: the template was not refused"
        );
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    };
    let kernel = a.initrd.display().to_string();
    refused(template, &["--kernel", &kernel], "its kernel is");
    let image = format!("{},ro", a.pmem_image.display());
    refused(template, &["--pmem", &image], "its pmem image is");
    refused(template, &["--mem", "512M"], "a template's size is its own");

    let copy = |name: &str| -> PathBuf {
        let dir = base.join(name);
        let st = Command::new("cp")
            .args(["-r", "--sparse=always"])
            .arg(template)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        dir
    };
    let v = copy("other-version");
    let header = std::fs::read_to_string(v.join("template.json")).unwrap();
    let header = header.replace(
        &format!("\"husk_version\": \"{}\"", env!("CARGO_PKG_VERSION")),
        "\"husk_version\": \"0.0.0-other\"",
    );
    std::fs::write(v.join("template.json"), header).unwrap();
    refused(&v, &[], "made with husk 0.0.0-other");

    let t = copy("truncated");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(t.join("memory.bin"))
        .unwrap();
    f.set_len(64 << 20).unwrap();
    refused(&t, &[], "memory file");

    let c = copy("corrupted-memory");
    flip_a_data_byte(&c.join("memory.bin"));
    refused(&c, &[], "corrupted");

    let s = copy("corrupted-state");
    let mut state = std::fs::read(s.join("state.json")).unwrap();
    let at = state.len() / 2;
    state[at] = if state[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(s.join("state.json"), state).unwrap();
    refused(&s, &[], "state.json");

    let empty = base.join("not-a-template");
    std::fs::create_dir_all(&empty).unwrap();
    refused(&empty, &[], "is not a husk template");
}

/// Changes one byte of the first page that holds data.
fn flip_a_data_byte(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut page = vec![0u8; 4096];
    let mut at = 0u64;
    loop {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut page).unwrap();
        if let Some(i) = page.iter().position(|&b| b != 0) {
            f.seek(SeekFrom::Start(at + i as u64)).unwrap();
            f.write_all(&[page[i] ^ 0xff]).unwrap();
            return;
        }
        at += 4096;
    }
}
