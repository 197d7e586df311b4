//! The VM's part of a sandbox's metrics: vCPU exits by reason, the virtio
//! devices' counters and the guest's size, read from the VMM's `VmMetrics`.
//!
//! Directions are the guest's: `tx` is what the guest sent, `rx` what it
//! was given.

use std::sync::atomic::{AtomicU64, Ordering};

use husk_vmm::{ExitReason, VmMetrics};

use super::text::{Kind, TextWriter};

fn get(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

pub fn write(w: &mut TextWriter, vm: &VmMetrics) {
    write_exits(w, vm);
    write_vsock(w, vm);
    write_fs(w, vm);
    write_net(w, vm);
    write_pmem(w, vm);
    w.family(
        "husk_guest_memory_bytes",
        Kind::Gauge,
        "The guest's RAM size.",
    )
    .sample("husk_guest_memory_bytes", &[], vm.mem_bytes as f64);
    w.family("husk_guest_vcpus", Kind::Gauge, "The guest's vCPUs.")
        .sample("husk_guest_vcpus", &[], vm.vcpus.len() as f64);
}

fn write_exits(w: &mut TextWriter, vm: &VmMetrics) {
    let name = "husk_vcpu_exits_total";
    w.family(
        name,
        Kind::Counter,
        "Returns from KVM_RUN to the VMM, by vCPU and reason.",
    );
    for (id, exits) in vm.vcpus.iter().enumerate() {
        let vcpu = id.to_string();
        for reason in ExitReason::ALL {
            let labels = [("vcpu", vcpu.as_str()), ("reason", reason.name())];
            w.sample(name, &labels, exits.get(reason) as f64);
        }
    }
}

fn write_vsock(w: &mut TextWriter, vm: &VmMetrics) {
    let Some(v) = &vm.devices.vsock else {
        return;
    };
    w.family(
        "husk_vsock_packets_total",
        Kind::Counter,
        "vsock packets the guest sent (tx) and was given (rx).",
    )
    .sample(
        "husk_vsock_packets_total",
        &[("direction", "tx")],
        get(&v.tx_packets),
    )
    .sample(
        "husk_vsock_packets_total",
        &[("direction", "rx")],
        get(&v.rx_packets),
    );
    w.family(
        "husk_vsock_bytes_total",
        Kind::Counter,
        "vsock payload bytes the guest sent (tx) and was given (rx), headers excluded.",
    )
    .sample(
        "husk_vsock_bytes_total",
        &[("direction", "tx")],
        get(&v.tx_bytes),
    )
    .sample(
        "husk_vsock_bytes_total",
        &[("direction", "rx")],
        get(&v.rx_bytes),
    );
    w.family(
        "husk_vsock_connections_opened_total",
        Kind::Counter,
        "vsock connections opened (either side; a template clone's taken-over connections included).",
    )
    .sample("husk_vsock_connections_opened_total", &[], get(&v.conns_opened));
    w.family(
        "husk_vsock_connections_closed_total",
        Kind::Counter,
        "vsock connections closed.",
    )
    .sample(
        "husk_vsock_connections_closed_total",
        &[],
        get(&v.conns_closed),
    );
    w.family(
        "husk_vsock_errors_total",
        Kind::Counter,
        "vsock trouble: malformed guest buffers or packets, resets sent.",
    )
    .sample(
        "husk_vsock_errors_total",
        &[("kind", "malformed")],
        get(&v.malformed),
    )
    .sample(
        "husk_vsock_errors_total",
        &[("kind", "reset_sent")],
        get(&v.rst_sent),
    );
}

fn write_fs(w: &mut TextWriter, vm: &VmMetrics) {
    let fs = &vm.devices.fs;
    if fs.is_empty() {
        return;
    }
    w.family(
        "husk_virtiofs_requests_total",
        Kind::Counter,
        "FUSE requests the virtio-fs device handed to its server, by share.",
    );
    for (tag, m) in fs {
        w.sample(
            "husk_virtiofs_requests_total",
            &[("tag", tag)],
            get(&m.requests),
        );
    }
    w.family(
        "husk_virtiofs_errors_total",
        Kind::Counter,
        "virtio-fs requests answered with the device's own error (error_reply), refused by policy (refused), or too broken to answer (dropped).",
    );
    for (tag, m) in fs {
        for (kind, c) in [
            ("error_reply", &m.error_replies),
            ("refused", &m.refused),
            ("dropped", &m.dropped_chains),
        ] {
            w.sample(
                "husk_virtiofs_errors_total",
                &[("tag", tag), ("kind", kind)],
                get(c),
            );
        }
    }
    w.family(
        "husk_virtiofs_bytes_total",
        Kind::Counter,
        "virtio-fs bytes: requests from the guest (in) and replies to it (out), FUSE headers included.",
    );
    for (tag, m) in fs {
        w.sample(
            "husk_virtiofs_bytes_total",
            &[("tag", tag), ("direction", "in")],
            get(&m.bytes_in),
        )
        .sample(
            "husk_virtiofs_bytes_total",
            &[("tag", tag), ("direction", "out")],
            get(&m.bytes_out),
        );
    }
}

fn write_net(w: &mut TextWriter, vm: &VmMetrics) {
    let nets = &vm.devices.net;
    if nets.is_empty() {
        return;
    }
    let cards: Vec<String> = (0..nets.len()).map(|i| i.to_string()).collect();
    w.family(
        "husk_net_packets_total",
        Kind::Counter,
        "Frames the guest's NIC sent to its tap (tx) and was given (rx).",
    );
    for (card, m) in cards.iter().zip(nets) {
        let card = card.as_str();
        w.sample(
            "husk_net_packets_total",
            &[("card", card), ("direction", "tx")],
            get(&m.tx_packets),
        )
        .sample(
            "husk_net_packets_total",
            &[("card", card), ("direction", "rx")],
            get(&m.rx_packets),
        );
    }
    w.family(
        "husk_net_bytes_total",
        Kind::Counter,
        "Frame bytes (virtio headers excluded) the guest's NIC sent (tx) and was given (rx).",
    );
    for (card, m) in cards.iter().zip(nets) {
        let card = card.as_str();
        w.sample(
            "husk_net_bytes_total",
            &[("card", card), ("direction", "tx")],
            get(&m.tx_bytes),
        )
        .sample(
            "husk_net_bytes_total",
            &[("card", card), ("direction", "rx")],
            get(&m.rx_bytes),
        );
    }
    w.family(
        "husk_net_dropped_total",
        Kind::Counter,
        "Frames dropped: guest frames no tap took (tx), tap frames no guest buffer took (rx).",
    );
    for (card, m) in cards.iter().zip(nets) {
        let card = card.as_str();
        w.sample(
            "husk_net_dropped_total",
            &[("card", card), ("direction", "tx")],
            get(&m.tx_dropped),
        )
        .sample(
            "husk_net_dropped_total",
            &[("card", card), ("direction", "rx")],
            get(&m.rx_dropped),
        );
    }
}

fn write_pmem(w: &mut TextWriter, vm: &VmMetrics) {
    let pmem = &vm.devices.pmem;
    if pmem.is_empty() {
        return;
    }
    w.family(
        "husk_pmem_flushes_total",
        Kind::Counter,
        "Guest flush requests on each pmem device.",
    );
    for (i, m) in pmem.iter().enumerate() {
        let dev = i.to_string();
        w.sample(
            "husk_pmem_flushes_total",
            &[("device", &dev)],
            get(&m.flushes),
        );
    }
}
