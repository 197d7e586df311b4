//! What containerd sends husk's shim (Task API requests over ttrpc,
//! protobuf) and the bundle a Create points at, through what the shim does
//! with them before it touches a VM, KVM, mounts, cgroups or the network:
//! the request decoded with `parse_from_bytes` (as the ttrpc server does),
//! `create_request`/`exec_request` (checkpoint and id checks, stdio
//! paths), and for Create the bundle's config.json through `BundleSpec`
//! (role, network, cgroup, memory limit, root, host binds, the guest's
//! spec), the VM sizing from annotations, the CRI runtime options, the
//! rootfs check and option split, and the sandbox and guest paths the
//! container id picks. Refusals must be errors, never panics.
//!
//! Input: a selector byte picking the request (mod 14: 0 Create, 1 Exec,
//! 2 Kill, 3 ResizePty, 4 CloseIO, 5 State, 6 Delete, 7 Wait, 8 Start,
//! 9 Update, 10 Pids, 11 Stats, 12 Connect, 13 a CRI runtime options
//! path), then the message. For Create the message comes after config.json
//! and a NUL (JSON holds no raw NUL), so seeds stay readable. The other
//! requests the shim only decodes and looks up by id (or forwards to the
//! agent), so they are decoded and checked to round-trip.
//!
//! Left out: `HuskConfig::load` (it would read the path the options name;
//! the defaults stand in), the real mounts, the sandbox boot, the agent
//! calls and the stdio copiers (FIFO opens and threads).

#![no_main]

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::{
    CloseIORequest, ConnectRequest, CreateTaskRequest, DeleteRequest, ExecProcessRequest,
    KillRequest, PidsRequest, ResizePtyRequest, StartRequest, StateRequest, StatsRequest,
    UpdateTaskRequest, WaitRequest,
};
use containerd_shim_protos::ttrpc::Code;
use husk_agent::container::ProcessPlan;
use husk_agent_protocol::GUEST_SHARED_DIR;
use husk_runtime::config::HuskConfig;
use husk_runtime::sandbox::dir::{guest_mount_source, guest_rootfs, SandboxDir};
use husk_runtime::sandbox::mounts::{check_rootfs, split_options, RootfsMount};
use husk_runtime::sandbox::size::vm_size;
use husk_runtime::sandbox::spec::{BundleSpec, SandboxRole, CONTAINER_TYPE, SANDBOX_ID};
use husk_runtime::sandbox::SandboxSettings;
use husk_runtime::shim::{check_id, config_path_option, create_request, exec_request};
use husk_runtime::stdio::Endpoint;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use vmm_sys_util::tempdir::TempDir;

/// The shim's sandbox id (containerd's `-id`): a pod sandbox's container
/// id, so seeds can name it in their annotations.
const SANDBOX: &str = "sandbox1";
/// Stands in for a refused request's id, so the bundle is still checked.
const FALLBACK_ID: &str = "fuzz";

/// Decoding and re-encoding gives the same message (unknown fields kept):
/// what the shim reads is what containerd meant.
fn round_trip<M: Message + PartialEq>(data: &[u8]) -> Option<M> {
    let m = M::parse_from_bytes(data).ok()?;
    let bytes = m.write_to_bytes().expect("a decoded message encodes");
    assert_eq!(bytes.len() as u64, m.compute_size());
    let again = M::parse_from_bytes(&bytes).expect("an encoded message decodes");
    assert!(again == m, "re-encoding changed the message");
    Some(m)
}

fn stdio(paths: [&str; 3]) {
    for p in paths {
        let none = matches!(Endpoint::fifo(p), Endpoint::None);
        assert_eq!(none, p.is_empty(), "{p:?}");
    }
}

fn create(data: &[u8]) {
    let (json, msg) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Some(req) = round_trip::<CreateTaskRequest>(msg) else {
        return;
    };
    let checkpoint = !req.checkpoint.is_empty();
    let (id, options) = (req.id.clone(), req.options.clone());
    let mounts: Vec<RootfsMount> = req
        .rootfs
        .iter()
        .map(|m| RootfsMount {
            typ: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    let (id, rootfs, options) = match create_request(req) {
        Ok(c) => {
            assert!(!checkpoint && check_id("container", &c.id).is_ok());
            assert_eq!((&c.id, &c.rootfs), (&id, &mounts));
            stdio([&c.io.stdin, &c.io.stdout, &c.io.stderr]);
            (c.id, c.rootfs, c.options)
        }
        Err(e) => {
            let code = if checkpoint {
                Code::UNIMPLEMENTED
            } else {
                Code::INVALID_ARGUMENT
            };
            assert_eq!(e.code, code, "{}", e.message);
            // The shim stops here; the rest is still checked so the
            // fuzzer's id mutations do not hide the spec's paths.
            (FALLBACK_ID.to_string(), mounts, options.into_option())
        }
    };
    rootfs_plan(&rootfs);
    if let Some(path) = config_path_option(options.as_ref()) {
        assert!(!path.as_os_str().is_empty());
    }
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("husk-fuzz-bundle-")).unwrap();
    std::fs::write(dir.as_path().join("config.json"), json).unwrap();
    if let Ok(spec) = BundleSpec::load(dir.as_path()) {
        bundle(&spec, dir.as_path(), &id);
    }
}

/// containerd's rootfs mounts: what `check_rootfs` takes, and the flags and
/// data `mount_rootfs` would pass mount(2).
fn rootfs_plan(rootfs: &[RootfsMount]) {
    let taken = check_rootfs(rootfs).is_ok();
    assert!(!taken || rootfs.len() <= 1);
    for m in rootfs {
        let (_, data) = split_options(&m.options);
        let flags = [
            "ro", "rw", "defaults", "nosuid", "nodev", "noexec", "bind", "rbind",
        ];
        assert!(
            !data.split(',').any(|d| flags.contains(&d)),
            "{data:?} keeps a flag"
        );
    }
}

fn bundle(spec: &BundleSpec, bundle: &Path, id: &str) {
    let annotations = spec.annotations();
    match spec.sandbox_role() {
        Ok(SandboxRole::Join(s)) => {
            assert_eq!(
                annotations.get(CONTAINER_TYPE).map(String::as_str),
                Some("container")
            );
            assert_eq!(annotations.get(SANDBOX_ID), Some(&s));
            assert!(!s.is_empty());
        }
        Ok(SandboxRole::Own) => {}
        Err(_) => assert_eq!(
            annotations.get(CONTAINER_TYPE).map(String::as_str),
            Some("container")
        ),
    }
    // The size of the VM a sandbox's first container would boot.
    let config = HuskConfig::default();
    let limit = spec.memory_limit();
    assert!(limit.is_none_or(|l| l > 0));
    if let Ok(size) = vm_size(&config, &annotations, limit) {
        let g = &config.guest;
        assert!(size.vcpus >= 1 && size.vcpus <= g.max_vcpus.max(g.vcpus));
        assert_eq!(size.mem_bytes % (2 << 20), 0);
        assert!(size.mem_bytes <= g.max_memory);
        assert!(size.mem_bytes >= limit.unwrap_or(0));
    }
    // The network check only stats the spec's namespace path.
    let _ = SandboxSettings::for_bundle(SANDBOX, &config, spec);
    assert!(spec.cgroups_path().is_none_or(|p| !p.is_empty()));
    if let Ok(root) = spec.root_path(bundle) {
        assert!(root.is_absolute());
    }
    guest_spec(spec, id);
}

/// The container's host and guest places, and the spec the agent gets.
fn guest_spec(spec: &BundleSpec, id: &str) {
    let shared = SandboxDir::new(Path::new("/run/husk"), SANDBOX).shared();
    let share = SandboxDir::new(Path::new("/run/husk"), SANDBOX).container(id);
    let root = guest_rootfs(id);
    if check_id("container", id).is_ok() {
        // A checked id is one plain directory below the shared directories.
        let below = |p: &Path, base: &Path| -> usize {
            let rest = p.strip_prefix(base).expect("outside the shared directory");
            assert!(
                rest.components().all(|c| matches!(c, Component::Normal(_))),
                "{p:?}"
            );
            rest.components().count()
        };
        assert_eq!(below(&share, &shared), 1, "{id:?}");
        assert_eq!(below(&root, Path::new(GUEST_SHARED_DIR)), 2, "{id:?}");
    }
    let mounts = spec.spec.mounts().clone().unwrap_or_default();
    let binds = spec.host_binds();
    let mut sources: HashMap<usize, PathBuf> = HashMap::new();
    for b in &binds {
        assert!(b.index < mounts.len());
        assert_eq!(mounts[b.index].source().as_ref(), Some(&b.source));
        sources.insert(b.index, guest_mount_source(id, b.index));
    }
    let Ok(json) = spec.for_guest(&root, &sources) else {
        return;
    };
    // The agent parses what it gets; it must be the same spec, pointing only
    // at guest paths where it pointed at the host.
    let guest: Spec = serde_json::from_slice(&json).expect("the guest spec parses");
    assert!(guest.hooks().is_none());
    if let Some(r) = guest.root() {
        assert_eq!(r.path(), &root);
    }
    let guest_mounts = guest.mounts().clone().unwrap_or_default();
    assert_eq!(guest_mounts.len(), mounts.len());
    for b in &binds {
        let src = guest_mounts[b.index].source().clone().unwrap();
        assert!(src.starts_with(GUEST_SHARED_DIR), "{src:?}");
    }
    if let Some(linux) = guest.linux() {
        assert!(linux.cgroups_path().is_none());
        for ns in linux.namespaces().iter().flatten() {
            assert!(ns.path().is_none() && ns.typ() != LinuxNamespaceType::Network);
        }
    }
    assert_eq!(
        guest.process(),
        spec.spec.process(),
        "the process changed on the way"
    );
    assert_eq!(guest.annotations(), spec.spec.annotations());
}

fn exec(data: &[u8]) {
    let Some(req) = round_trip::<ExecProcessRequest>(data) else {
        return;
    };
    let value = req
        .spec
        .as_ref()
        .map(|a| a.value.clone())
        .unwrap_or_default();
    match exec_request(&req) {
        Ok((spec, io)) => {
            assert!(check_id("exec", &req.exec_id).is_ok());
            assert!(!spec.is_empty() && spec == value);
            assert_eq!(io.terminal, req.terminal);
            stdio([&io.stdin, &io.stdout, &io.stderr]);
            // What the agent does with the bytes when the exec starts.
            if let Ok(process) = serde_json::from_slice::<Process>(&spec) {
                let _ = ProcessPlan::from_oci(&process, None, io.terminal);
            }
        }
        Err(e) => {
            assert_eq!(e.code, Code::INVALID_ARGUMENT);
            assert!(value.is_empty() || check_id("exec", &req.exec_id).is_err());
        }
    }
}

/// CRI's runtime options, `runtimeoptions.v1.Options`: a config path the
/// input picks comes back as written.
fn options(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let mut value = vec![0x0a, 1, b'x', 0x12];
    let mut len = path.len();
    while len >= 0x80 {
        value.push((len as u8) | 0x80);
        len >>= 7;
    }
    value.push(len as u8);
    value.extend_from_slice(path.as_bytes());
    let mut any = Any::new();
    any.type_url = "type.googleapis.com/runtimeoptions.v1.Options".into();
    any.value = value;
    let want = (!path.is_empty()).then(|| PathBuf::from(path));
    assert_eq!(config_path_option(Some(&any)), want);
    // The same bytes as the options' raw value.
    any.value = data.to_vec();
    let _ = config_path_option(Some(&any));
}

/// The requests the shim only looks up by id and hands to the agent:
/// decoded and re-encoded, for selectors 2 to 12 in this order.
const FORWARDED: [fn(&[u8]); 11] = [
    decode::<KillRequest>,
    decode::<ResizePtyRequest>,
    decode::<CloseIORequest>,
    decode::<StateRequest>,
    decode::<DeleteRequest>,
    decode::<WaitRequest>,
    decode::<StartRequest>,
    decode::<UpdateTaskRequest>,
    decode::<PidsRequest>,
    decode::<StatsRequest>,
    decode::<ConnectRequest>,
];

fn decode<M: Message + PartialEq>(data: &[u8]) {
    let _ = round_trip::<M>(data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 14 {
        0 => create(rest),
        1 => exec(rest),
        13 => options(rest),
        n => FORWARDED[usize::from(n) - 2](rest),
    }
});
