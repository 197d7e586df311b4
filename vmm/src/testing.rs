//! Helpers shared by the KVM and real-guest tests of every husk crate.

/// Tests that need /dev/kvm call this first; without it they print why they
/// skip and return false. On machines with KVM (all of this project's) they run.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP {test}: needs read/write access to /dev/kvm ({e})");
            false
        }
    }
}
