//! A pod's network plumbing: `setup` when the sandbox starts, `teardown`
//! when it ends, `cleanup` after a crash. Each runs its netlink work on a
//! thread inside the pod's network namespace (`netns::in_netns`).
//!
//! `setup` reads the CNI interface (`discover`), makes sure its ingress hook
//! is free (a husk leftover, whose redirects point at a device that no longer
//! exists, is removed; anything else is refused), creates the tap, gives it
//! the interface's MTU, brings it up and adds the two redirects (`tc`). A
//! failure part-way undoes what was done. `cleanup` needs only the netns path
//! and the tap name, so a fresh process can run it after a `kill -9`: it
//! removes the ingress qdiscs whose filters only redirect to the tap or to a
//! device that is gone, then the tap if it is still there; a namespace or a
//! tap that is already gone is not an error.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::discover::{self, DiscoverError, Link, LinkKind};
use super::guest::GuestNetwork;
use super::netns::{in_netns, NetnsError};
use super::rtnl::Rtnl;
use super::{link, tap, tc};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod network namespace {netns}: {source}")]
    Discover {
        netns: PathBuf,
        source: DiscoverError,
    },
    #[error("pod network namespace {netns}: {what}: {source}")]
    Netlink {
        netns: PathBuf,
        what: String,
        source: io::Error,
    },
    #[error("pod network namespace {netns}: a link named {name} already exists (a husk runs this pod, or a crashed one left it: run husk's network cleanup)")]
    TapExists { netns: PathBuf, name: String },
    #[error("pod network namespace {netns}: creating tap {name}: {source}")]
    CreateTap {
        netns: PathBuf,
        name: String,
        source: io::Error,
    },
    #[error("pod network namespace {netns}: {link} already has an ingress qdisc ({detail}) that husk did not make; husk redirects {link}'s ingress to the guest and cannot share it")]
    IngressInUse {
        netns: PathBuf,
        link: String,
        detail: String,
    },
}

/// The pod's network as the runtime holds it while the sandbox runs.
#[derive(Debug)]
pub struct PodNetwork {
    /// The pod's network namespace (persist it with `tap_name` for `cleanup`).
    pub netns: PathBuf,
    pub tap_name: String,
    /// The tap's fd (non-blocking, vnet header on): give a clone of it to the
    /// VMM's virtio-net device. The tap exists while any copy is open.
    pub tap: File,
    /// What the guest's NIC must look like (see `GuestNetwork`'s requests).
    pub guest: GuestNetwork,
    veth_index: u32,
    tap_index: u32,
}

/// What `cleanup` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub tap_removed: bool,
    /// The links whose ingress qdisc (husk's redirect) was removed.
    pub ingress_removed: Vec<String>,
}

/// Errors built on the namespace thread, each naming the namespace.
struct Ctx<'a> {
    netns: &'a Path,
}

impl Ctx<'_> {
    fn netlink(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError + '_ {
        let what = what.into();
        move |source| NetworkError::Netlink {
            netns: self.netns.to_path_buf(),
            what,
            source,
        }
    }

    fn discover(&self, source: DiscoverError) -> NetworkError {
        NetworkError::Discover {
            netns: self.netns.to_path_buf(),
            source,
        }
    }
}

/// Creates tap `tap_name` in the pod's network namespace `netns` and joins it
/// to the CNI interface with tc redirects both ways.
pub fn setup(netns: &Path, tap_name: &str) -> Result<PodNetwork, NetworkError> {
    let pod = in_netns(netns, || setup_in(&Ctx { netns }, tap_name))??;
    tracing::info!(
        netns = %netns.display(),
        tap = tap_name,
        iface = %pod.guest.iface_name,
        mac = %pod.guest.mac_string(),
        mtu = pod.guest.mtu,
        addresses = pod.guest.addresses.len(),
        routes = pod.guest.routes.len(),
        "pod network: tap joined to the CNI interface"
    );
    Ok(pod)
}

fn setup_in(ctx: &Ctx, tap_name: &str) -> Result<PodNetwork, NetworkError> {
    let mut rtnl = Rtnl::open().map_err(ctx.netlink("opening a netlink socket"))?;
    let facts = discover::read(&mut rtnl).map_err(|e| ctx.discover(e))?;
    if facts.links.iter().any(|l| l.name == tap_name) {
        return Err(NetworkError::TapExists {
            netns: ctx.netns.to_path_buf(),
            name: tap_name.to_string(),
        });
    }
    let veth = discover::choose_interface(&facts, tap_name)
        .map_err(|e| ctx.discover(e))?
        .clone();
    let guest = discover::guest_network(&facts, &veth).map_err(|e| ctx.discover(e))?;
    claim_ingress(ctx, &mut rtnl, &facts.links, &veth)?;

    let tap = tap::create(tap_name).map_err(|source| NetworkError::CreateTap {
        netns: ctx.netns.to_path_buf(),
        name: tap_name.to_string(),
        source,
    })?;
    let mut made = Made::default();
    match plumb(ctx, &mut rtnl, tap_name, &veth, guest.mtu, &mut made) {
        Ok(tap_index) => Ok(PodNetwork {
            netns: ctx.netns.to_path_buf(),
            tap_name: tap_name.to_string(),
            tap,
            guest,
            veth_index: veth.index,
            tap_index,
        }),
        Err(e) => {
            made.undo(&mut rtnl);
            Err(e)
        }
    }
}

/// What `plumb` did so far, to undo on failure.
#[derive(Default)]
struct Made {
    tap_index: Option<u32>,
    veth_ingress: Option<u32>,
}

impl Made {
    fn undo(self, rtnl: &mut Rtnl) {
        if let Some(i) = self.veth_ingress {
            if let Err(e) = tc::delete_ingress_qdisc(rtnl, i) {
                tracing::warn!("undoing pod network setup: removing the ingress qdisc: {e}");
            }
        }
        if let Some(i) = self.tap_index {
            if let Err(e) = link::delete(rtnl, i) {
                tracing::warn!("undoing pod network setup: deleting the tap: {e}");
            }
        }
    }
}

fn plumb(
    ctx: &Ctx,
    rtnl: &mut Rtnl,
    tap_name: &str,
    veth: &Link,
    mtu: u32,
    made: &mut Made,
) -> Result<u32, NetworkError> {
    let links = discover::read_links(rtnl).map_err(ctx.netlink("reading links"))?;
    let tap_index = links
        .iter()
        .find(|l| l.name == tap_name)
        .map(|l| l.index)
        .ok_or_else(|| {
            ctx.netlink(format!("finding tap {tap_name}"))(io::Error::from_raw_os_error(
                libc::ENODEV,
            ))
        })?;
    made.tap_index = Some(tap_index);
    link::set_mtu_and_up(rtnl, tap_index, mtu)
        .map_err(ctx.netlink(format!("setting {tap_name} up with MTU {mtu}")))?;
    tc::add_ingress_qdisc(rtnl, veth.index)
        .map_err(ctx.netlink(format!("adding an ingress qdisc to {}", veth.name)))?;
    made.veth_ingress = Some(veth.index);
    tc::add_ingress_qdisc(rtnl, tap_index)
        .map_err(ctx.netlink(format!("adding an ingress qdisc to {tap_name}")))?;
    tc::add_redirect(rtnl, veth.index, tap_index)
        .map_err(ctx.netlink(format!("redirecting {} to {tap_name}", veth.name)))?;
    tc::add_redirect(rtnl, tap_index, veth.index)
        .map_err(ctx.netlink(format!("redirecting {tap_name} to {}", veth.name)))?;
    Ok(tap_index)
}

/// Whether `filters` are husk's redirects towards `tap` or towards devices
/// that no longer exist (a crashed husk's non-persistent tap).
fn husks_leftover(filters: &tc::IngressFilters, tap: Option<u32>, links: &HashSet<u32>) -> bool {
    filters.others == 0
        && !filters.redirects.is_empty()
        && filters
            .redirects
            .iter()
            .all(|t| Some(*t) == tap || !links.contains(t))
}

/// Makes sure `veth`'s ingress is free: a husk leftover is removed, anything
/// else is refused.
fn claim_ingress(
    ctx: &Ctx,
    rtnl: &mut Rtnl,
    links: &[Link],
    veth: &Link,
) -> Result<(), NetworkError> {
    let has = tc::has_ingress_qdisc(rtnl, veth.index)
        .map_err(ctx.netlink(format!("reading {}'s qdiscs", veth.name)))?;
    if !has {
        return Ok(());
    }
    let filters = tc::ingress_filters(rtnl, veth.index)
        .map_err(ctx.netlink(format!("reading {}'s ingress filters", veth.name)))?;
    let indexes: HashSet<u32> = links.iter().map(|l| l.index).collect();
    if !husks_leftover(&filters, None, &indexes) {
        return Err(NetworkError::IngressInUse {
            netns: ctx.netns.to_path_buf(),
            link: veth.name.clone(),
            detail: format!(
                "{} redirects, {} other filters or actions",
                filters.redirects.len(),
                filters.others
            ),
        });
    }
    tracing::warn!(
        netns = %ctx.netns.display(),
        link = %veth.name,
        "removing a stale husk redirect (its tap is gone)"
    );
    tc::delete_ingress_qdisc(rtnl, veth.index)
        .map_err(ctx.netlink(format!("removing {}'s stale ingress qdisc", veth.name)))?;
    Ok(())
}

impl PodNetwork {
    /// Removes the redirects and the tap, and closes the tap's fd (the
    /// VMM's copy, if any, then reads and writes errors). A namespace that
    /// is already gone is not an error; after any other error, [`cleanup`]
    /// with the same namespace and tap name can finish the job.
    pub fn teardown(self) -> Result<(), NetworkError> {
        let PodNetwork {
            netns,
            tap_name,
            tap,
            veth_index,
            tap_index,
            ..
        } = self;
        let ctx = Ctx { netns: &netns };
        let result = in_netns(&netns, || -> Result<(), NetworkError> {
            let mut rtnl = Rtnl::open().map_err(ctx.netlink("opening a netlink socket"))?;
            tc::delete_ingress_qdisc(&mut rtnl, veth_index)
                .map_err(ctx.netlink("removing the CNI interface's ingress qdisc"))?;
            link::delete(&mut rtnl, tap_index)
                .map_err(ctx.netlink(format!("deleting tap {tap_name}")))?;
            Ok(())
        });
        drop(tap);
        match result {
            Ok(done) => done?,
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(netns = %netns.display(), tap = %tap_name, "pod network torn down");
        Ok(())
    }
}

/// Removes what `setup` made in `netns` with tap `tap_name`, without the
/// `PodNetwork` (after a crash). Idempotent; a missing namespace or tap is
/// nothing to do. Only for a pod that no husk serves any more: it deletes
/// the tap even when a process still holds it.
pub fn cleanup(netns: &Path, tap_name: &str) -> Result<Cleanup, NetworkError> {
    let done = match in_netns(netns, || cleanup_in(&Ctx { netns }, tap_name)) {
        Ok(done) => done?,
        Err(e) if e.is_gone() => return Ok(Cleanup::default()),
        Err(e) => return Err(e.into()),
    };
    if done != Cleanup::default() {
        tracing::info!(netns = %netns.display(), tap = tap_name, ?done, "pod network cleaned up");
    }
    Ok(done)
}

fn cleanup_in(ctx: &Ctx, tap_name: &str) -> Result<Cleanup, NetworkError> {
    let mut rtnl = Rtnl::open().map_err(ctx.netlink("opening a netlink socket"))?;
    let links = discover::read_links(&mut rtnl).map_err(ctx.netlink("reading links"))?;
    let tap = links.iter().find(|l| l.name == tap_name).map(|l| l.index);
    let indexes: HashSet<u32> = links.iter().map(|l| l.index).collect();
    let mut done = Cleanup::default();
    let others = links
        .iter()
        .filter(|l| Some(l.index) != tap && l.kind != LinkKind::Loopback);
    for l in others {
        let has = tc::has_ingress_qdisc(&mut rtnl, l.index)
            .map_err(ctx.netlink(format!("reading {}'s qdiscs", l.name)))?;
        if !has {
            continue;
        }
        let filters = tc::ingress_filters(&mut rtnl, l.index)
            .map_err(ctx.netlink(format!("reading {}'s ingress filters", l.name)))?;
        if husks_leftover(&filters, tap, &indexes) {
            tc::delete_ingress_qdisc(&mut rtnl, l.index)
                .map_err(ctx.netlink(format!("removing {}'s ingress qdisc", l.name)))?;
            done.ingress_removed.push(l.name.clone());
        } else {
            tracing::info!(link = %l.name, "leaving an ingress qdisc husk did not make");
        }
    }
    if let Some(index) = tap {
        done.tap_removed = link::delete(&mut rtnl, index)
            .map_err(ctx.netlink(format!("deleting tap {tap_name}")))?;
    }
    Ok(done)
}
