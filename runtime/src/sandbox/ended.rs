//! Why a sandbox's VM ended, read from the last lines of its console: the
//! guest kernel says why it stopped (a panic, a power-off, a restart), and
//! the agent says why it gave up before it powers the guest off.

/// One sentence naming how the guest ended, for logs and errors.
pub fn end_reason(console_tail: &str) -> String {
    let lines: Vec<&str> = console_tail.lines().map(strip_timestamp).collect();
    let last = |prefix: &str| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.find(prefix).map(|at| l[at + prefix.len()..].trim()))
    };
    // Not `last`: the panic's closing line "---[ end Kernel panic - ..." repeats it.
    let panic = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("Kernel panic - not syncing:"));
    if let Some(why) = panic.map(str::trim) {
        return format!("the guest kernel panicked: {why}");
    }
    if let Some(why) = last("husk-agent: fatal:") {
        return format!("the agent failed and powered the guest off: {why}");
    }
    if last("reboot: Power down").is_some() {
        return "the guest powered itself off".into();
    }
    if last("reboot: Restarting system").is_some() {
        return "the guest restarted (a VM ends at its guest's reset)".into();
    }
    "the VM ended and its console does not say why".into()
}

/// `[   12.345678] text` -> `text`.
fn strip_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((_, rest)) => rest,
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_panic_is_named_with_its_message() {
        let console = "[    3.100000] sysrq: Trigger a crash\n\
                       [    3.200000] Kernel panic - not syncing: sysrq triggered crash\n\
                       [    3.300000] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n";
        assert_eq!(
            end_reason(console),
            "the guest kernel panicked: sysrq triggered crash"
        );
    }

    #[test]
    fn the_agents_fatal_error_beats_the_power_off_it_causes() {
        let console = "husk-agent: fatal: mounting proc at /proc: EPERM; powering the guest off\n\
                       [    9.0] reboot: Power down\n";
        assert_eq!(
            end_reason(console),
            "the agent failed and powered the guest off: mounting proc at /proc: EPERM; \
             powering the guest off"
        );
    }

    #[test]
    fn power_off_restart_and_silence_are_told_apart() {
        assert_eq!(
            end_reason("[    1.0] reboot: Power down\n"),
            "the guest powered itself off"
        );
        assert!(end_reason("[ 1.0] reboot: Restarting system\n").starts_with("the guest restarted"));
        assert_eq!(
            end_reason("booting\n"),
            "the VM ended and its console does not say why"
        );
        assert_eq!(end_reason(""), end_reason("\n\n"));
    }
}
