//! The traffic-control plumbing that joins the tap and the pod interface
//! (what Kata calls "tcfilter" mode): an ingress qdisc on each, and on each
//! one u32 filter that matches every frame (one key with mask 0) with a
//! mirred action that redirects it to the other's egress. A frame the CNI
//! delivers to the veth goes out of the tap to the guest; a frame the guest
//! writes to the tap goes out of the veth. Nothing is bridged and no
//! address moves: the veth keeps its IP configuration, which the guest
//! copies. Equivalent to
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev B`.
//!
//! Removing the ingress qdisc removes its filters with it. To tell husk's
//! leftovers from someone else's qdisc after a crash, `ingress_filters`
//! reads which devices a link's ingress filters redirect to.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::rtnl::{is_gone, Rtnl};

/// <linux/if_ether.h>: every protocol.
const ETH_P_ALL: u16 = 0x0003;
const INGRESS_KIND: &str = "ingress";
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

fn ingress_message(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_HANDLE;
    m
}

/// Adds an ingress qdisc to link `index`; fails with EEXIST if it has one.
pub fn add_ingress_qdisc(rtnl: &mut Rtnl, index: u32) -> io::Result<()> {
    let mut m = ingress_message(index);
    m.attributes
        .push(TcAttribute::Kind(INGRESS_KIND.to_string()));
    rtnl.request(
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes link `index`'s ingress qdisc and its filters; false when it had none.
pub fn delete_ingress_qdisc(rtnl: &mut Rtnl, index: u32) -> io::Result<bool> {
    match rtnl.request(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_message(index)),
        0,
    ) {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) || e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether link `index` has an ingress qdisc.
pub fn has_ingress_qdisc(rtnl: &mut Rtnl, index: u32) -> io::Result<bool> {
    let dump = rtnl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))?;
    Ok(dump.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == index as i32
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == INGRESS_KIND))
        }
        _ => false,
    }))
}

/// Redirects every frame arriving on link `from` to the egress of link `to`.
pub fn add_redirect(rtnl: &mut Rtnl, from: u32, to: u32) -> io::Result<()> {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    // One key with mask 0 at offset 0: matches every frame.
    selector.keys = vec![TcU32Key::default()];

    let mut mirred = TcMirror::default();
    mirred.generic = TcActionGeneric::default();
    mirred.generic.action = TcActionType::Stolen;
    mirred.eaction = TcMirrorActionType::EgressRedir;
    mirred.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];

    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_HANDLE;
    // tcm_info: priority (0: the kernel picks) << 16 | protocol in network order.
    m.header.info = u32::from(ETH_P_ALL.to_be());
    m.attributes = vec![
        TcAttribute::Kind(TcFilterU32::KIND.to_string()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    rtnl.request(
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// What a link's ingress filters do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IngressFilters {
    /// The ifindex each mirred egress redirect sends to (0 once the
    /// target device is gone).
    pub redirects: Vec<u32>,
    /// Filters or actions of any other kind.
    pub others: usize,
}

/// Reads link `index`'s ingress filters (none when it has no ingress qdisc).
pub fn ingress_filters(rtnl: &mut Rtnl, index: u32) -> io::Result<IngressFilters> {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = INGRESS_HANDLE;
    let mut found = IngressFilters::default();
    for reply in rtnl.dump(RouteNetlinkMessage::GetTrafficFilter(m))? {
        if let RouteNetlinkMessage::NewTrafficFilter(f) = reply {
            classify(&f, &mut found);
        }
    }
    Ok(found)
}

fn classify(filter: &TcMessage, found: &mut IngressFilters) {
    let is_u32 = filter
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == TcFilterU32::KIND));
    if !is_u32 {
        found.others += 1;
        return;
    }
    // A u32 filter dumps its hash table first (no actions), then its keys.
    let actions = filter.attributes.iter().filter_map(|a| match a {
        TcAttribute::Options(opts) => Some(opts),
        _ => None,
    });
    for action in actions.flatten().filter_map(|o| match o {
        TcOption::U32(TcFilterU32Option::Action(acts)) => Some(acts),
        _ => None,
    }) {
        for a in action {
            match redirect_target(a) {
                Some(ifindex) => found.redirects.push(ifindex),
                None => found.others += 1,
            }
        }
    }
}

fn redirect_target(action: &TcAction) -> Option<u32> {
    let options = action.attributes.iter().find_map(|a| match a {
        TcActionAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    options.iter().find_map(|o| match o {
        TcActionOption::Mirror(TcActionMirrorOption::Parms(p))
            if p.eaction == TcMirrorActionType::EgressRedir =>
        {
            Some(p.ifindex)
        }
        _ => None,
    })
}
