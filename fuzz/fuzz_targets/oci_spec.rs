//! The OCI runtime spec the agent receives in CreateContainer (and the
//! `process` of ExecProcess), as `ContainerManager::create` and `exec`
//! check and convert it before they create anything: the JSON parsed into
//! oci-spec's `Spec` (or `Process`), then `ProcessPlan::from_oci` (argv and
//! env as C strings, cwd, capabilities, rlimits, and the seccomp profile
//! compiled to BPF with seccompiler). Nothing mounts, forks or installs a
//! filter. Bad specs must be errors, never panics.

#![no_main]

use husk_agent::container::ProcessPlan;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{Process, Spec};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the terminal flag (create and exec take it from
    // the request, not the spec); the rest is the JSON.
    let Some((&flags, json)) = data.split_first() else {
        return;
    };
    let terminal = flags & 1 != 0;
    if let Ok(spec) = serde_json::from_slice::<Spec>(json) {
        if let Some(process) = spec.process() {
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
            let _ = ProcessPlan::from_oci(process, seccomp.as_ref(), terminal);
        }
    }
    // The same bytes as an exec's `process` (its container's seccomp profile
    // is already checked above, so none here).
    if let Ok(process) = serde_json::from_slice::<Process>(json) {
        let _ = ProcessPlan::from_oci(&process, None, terminal);
    }
});
