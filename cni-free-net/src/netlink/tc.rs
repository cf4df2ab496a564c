//! Traffic control on a [`Handle`]: the ingress qdisc and the u32 + mirred
//! filter that redirects everything an interface receives to another one.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::error::Result;
use super::handle::Handle;

/// The ingress qdisc's handle, `ffff:`; filters on it name it as their parent.
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// TC_H_INGRESS: where the ingress qdisc hangs.
pub const INGRESS_PARENT: u32 = 0xffff_fff1;

/// A queueing discipline; handles are `major:minor` packed in a u32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
}

impl Qdisc {
    pub fn is_ingress(&self) -> bool {
        self.parent == INGRESS_PARENT
    }
}

/// A tc filter. A u32 filter shows up as more than one entry (its hash table
/// and its rules); `redirect_to` is set on the entry whose action is a mirred
/// redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub kind: String,
    pub parent: u32,
    pub handle: u32,
    pub priority: u16,
    /// The ethertype it matches, in host order (ETH_P_ALL = 3 for all).
    pub protocol: u16,
    pub redirect_to: Option<u32>,
}

impl Handle {
    /// `tc qdisc add dev IFACE ingress`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut request = TcMessage::with_index(index as i32);
        request.header.handle = TcHandle::from(INGRESS_HANDLE);
        request.header.parent = TcHandle::from(INGRESS_PARENT);
        request
            .attributes
            .push(TcAttribute::Kind("ingress".to_owned()));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(request),
            NLM_F_CREATE | NLM_F_EXCL,
            |h| format!("add an ingress qdisc to {}", h.name_of(index)),
        )
    }

    /// `tc qdisc del dev IFACE ingress`, which takes its filters along.
    /// ENOENT if there is none.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut request = TcMessage::with_index(index as i32);
        // Handle 0 rather than ffff:, so that a missing qdisc is ENOENT (the
        // kernel would compare the handle with its placeholder and say EINVAL).
        request.header.parent = TcHandle::from(INGRESS_PARENT);
        self.request(RouteNetlinkMessage::DelQueueDiscipline(request), 0, |h| {
            format!("delete the ingress qdisc of {}", h.name_of(index))
        })
    }

    /// The qdiscs of interface `index`.
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<Qdisc>> {
        self.tc_dump(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(index as i32)),
            index,
            || format!("list the qdiscs of interface #{index}"),
            |q| Qdisc {
                kind: kind_of(&q.attributes),
                handle: q.header.handle.into(),
                parent: q.header.parent.into(),
            },
        )
    }

    /// Redirects everything interface `from` receives to the egress of `to`:
    /// `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0
    /// action mirred egress redirect dev TO`. `from` needs an ingress qdisc.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<()> {
        let mut request = TcMessage::with_index(from as i32);
        request.header.parent = TcHandle::from(INGRESS_HANDLE);
        // tcm_info: priority (0: the kernel picks one) in the high half, the
        // protocol in network order in the low half.
        request.header.info = u32::from((libc::ETH_P_ALL as u16).to_be());
        request
            .attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_owned()));
        request.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(match_everything())),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect_to(to)])),
        ]));
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(request),
            NLM_F_CREATE | NLM_F_EXCL,
            |h| {
                let (from, to) = (h.name_of(from), h.name_of(to));
                format!("redirect what {from} receives to {to}")
            },
        )
    }

    /// The filters on the ingress qdisc of interface `index` (none without one).
    pub fn filters(&mut self, index: u32) -> Result<Vec<Filter>> {
        let mut request = TcMessage::with_index(index as i32);
        request.header.parent = TcHandle::from(INGRESS_HANDLE);
        self.tc_dump(
            RouteNetlinkMessage::GetTrafficFilter(request),
            index,
            || format!("list the ingress filters of interface #{index}"),
            |f| Filter {
                kind: kind_of(&f.attributes),
                parent: f.header.parent.into(),
                handle: f.header.handle.into(),
                priority: (f.header.info >> 16) as u16,
                protocol: u16::from_be(f.header.info as u16),
                redirect_to: redirect_of(&f.attributes),
            },
        )
    }

    /// Dumps qdiscs or filters and keeps those of interface `index`: without
    /// strict checking the kernel sends every interface's.
    fn tc_dump<T>(
        &mut self,
        request: RouteNetlinkMessage,
        index: u32,
        op: impl FnOnce() -> String,
        make: impl Fn(TcMessage) -> T,
    ) -> Result<Vec<T>> {
        self.dump_map(request, op, |m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(t)
            | RouteNetlinkMessage::NewTrafficFilter(t)
                if t.header.index == index as i32 =>
            {
                Some(make(t))
            }
            _ => None,
        })
    }
}

/// iproute2's `match u8 0 0`: one key that compares nothing, terminal so
/// that a match runs the actions.
fn match_everything() -> TcU32Selector {
    // All zero: mask 0 at offset 0, which every packet matches.
    let key = TcU32Key::default();
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![key];
    selector
}

fn redirect_to(index: u32) -> TcAction {
    let mut mirror = TcMirror::default();
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = index;
    // A redirected packet is consumed (TC_ACT_STOLEN), as iproute2 sets it.
    mirror.generic.action = TcActionType::Stolen;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    action
}

fn kind_of(attributes: &[TcAttribute]) -> String {
    attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn redirect_of(attributes: &[TcAttribute]) -> Option<u32> {
    let options = attributes.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    options.iter().find_map(|o| match o {
        TcOption::U32(TcFilterU32Option::Action(actions)) => actions
            .iter()
            .flat_map(|a| &a.attributes)
            .find_map(|a| match a {
                TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                    TcActionOption::Mirror(TcActionMirrorOption::Parms(p))
                        if p.eaction == TcMirrorActionType::EgressRedir =>
                    {
                        Some(p.ifindex)
                    }
                    _ => None,
                }),
                _ => None,
            }),
        _ => None,
    })
}
