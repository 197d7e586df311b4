//! Net devices in templates, through the whole `Vm` path with a tiny guest
//! that says it is up and halts: a template records each card's MAC and
//! MTU; a clone restores with a new tap, or none, keeping the template's
//! MAC when it names none; a clone with other cards is refused before
//! anything runs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use husk_devices::net::tap_rig::{tap_or_skip, TapRig};
use husk_vmm::snapshot::format::{NetLayout, Template};
use husk_vmm::{
    CompatMode, ConsoleTarget, ConsoleWatch, MacAddr, NetSpec, VmConfig, VmError, VmHandle,
};

const GUEST: &str = r#"
.section .note.Xen, "a", @note
.align 4
.long 4, 4, 18              # name size, desc size, XEN_ELFNOTE_PHYS32_ENTRY
.asciz "Xen"
.long _start

.text
.code32
.globl _start
_start:
    mov $0x3f8, %dx
    mov $'u', %al
    out %al, %dx
    mov $'p', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    cli
1:  hlt
    jmp 1b
"#;

const MAC: MacAddr = MacAddr([0x02, 0x42, 0, 0, 0, 0x07]);

fn config(kernel: &std::path::Path, net: Vec<NetSpec>, console: ConsoleTarget) -> VmConfig {
    VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: None,
        mem_bytes: 64 << 20,
        cpus: 1,
        cmdline: Some("husk.test=net-template".into()),
        console,
        compat: CompatMode::Off,
        on_first_entry: None,
        vsock: None,
        pmem: Vec::new(),
        fs: Vec::new(),
        net,
        template: None,
        seccomp: true,
    }
}

fn card(mac: Option<MacAddr>, mtu: u16, tap: Option<husk_vmm::Tap>) -> NetSpec {
    NetSpec {
        mac,
        mtu,
        tap: tap.map(Arc::new),
    }
}

fn refusal(config: &VmConfig) -> String {
    match VmHandle::start(config) {
        Err(VmError::Template(e)) => e.to_string(),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a mismatched clone was not refused"),
    }
}

#[test]
fn a_template_keeps_its_cards_and_clones_get_their_own_taps() {
    let test = "a_template_keeps_its_cards_and_clones_get_their_own_taps";
    if !common::kvm_or_skip(test) || !tap_or_skip(test) {
        return;
    }
    let dir = common::temp_dir("net-template");
    let kernel = common::assemble_elf(&dir, GUEST, 0x100000);
    let (_rig, tap) = TapRig::new();
    let watch = ConsoleWatch::new();
    let cards = vec![card(Some(MAC), 1400, Some(tap)), card(None, 1500, None)];
    let vm = VmHandle::start(&config(&kernel, cards, ConsoleTarget::Watch(watch.clone()))).unwrap();
    watch.wait_for("up", Duration::from_secs(60)).unwrap();
    let template = dir.join("template");
    std::fs::create_dir_all(&template).unwrap();
    vm.snapshot(&template).unwrap();

    let t = Template::open(&template).unwrap();
    let net = &t.header.devices.net;
    assert_eq!(net.len(), 2);
    assert_eq!(
        net[0],
        NetLayout {
            mac: MAC,
            mtu: 1400
        }
    );
    assert_eq!(net[1].mtu, 1500);
    assert_eq!(net[1].mac.0[0] & 0x03, 0x02, "a random local address");
    let second = net[1].mac;

    let clone = |net: Vec<NetSpec>| {
        let mut c = config(&kernel, net, ConsoleTarget::File(dir.join("clone.log")));
        c.template = Some(template.clone());
        c
    };
    // A new tap for the first card, none for the second; MACs from the template.
    let (_rig2, tap2) = TapRig::new();
    let vm = VmHandle::start(&clone(vec![
        card(None, 1400, Some(tap2)),
        card(None, 1500, None),
    ]))
    .expect("the clone restores");
    vm.stop();
    vm.wait().unwrap();
    // Naming the template's own MAC is fine; naming another is not.
    let named = clone(vec![
        card(Some(MAC), 1400, None),
        card(Some(second), 1500, None),
    ]);
    VmHandle::start(&named)
        .expect("the same MACs restore")
        .stop();

    let other = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    let wrong_mac = refusal(&clone(vec![
        card(Some(other), 1400, None),
        card(None, 1500, None),
    ]));
    assert!(wrong_mac.contains("net device MAC"), "{wrong_mac}");
    let wrong_mtu = refusal(&clone(vec![card(None, 9000, None), card(None, 1500, None)]));
    assert!(wrong_mtu.contains("net device MTU"), "{wrong_mtu}");
    let fewer = refusal(&clone(vec![card(None, 1400, None)]));
    assert!(fewer.contains("net device count"), "{fewer}");
    std::fs::remove_dir_all(dir).unwrap();
}
