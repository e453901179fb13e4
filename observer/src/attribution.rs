//! Names both ends of a flow: pod, workload and Service from the Kubernetes index, then the
//! architecture's component, external or reserved party for each end.

use observer_common::record::{Endpoint, FlowRecord, Scope};

use crate::architecture::{Architecture, NODE};

/// The architecture party of an end the index could not name: the node itself, or an
/// external found by host name (exact or wildcard) or address range.
fn outside_party(model: &Architecture, ep: &Endpoint, as_source: bool) -> Option<String> {
    match ep.scope? {
        Scope::Node => Some(NODE.to_owned()),
        Scope::External => {
            let by_host = ep.host.as_deref().and_then(|h| model.external_for_host(h));
            let by_ip = ep.ip.and_then(|ip| {
                if as_source {
                    model.external_for_ip(ip)
                } else {
                    model.external_for_destination_ip(ip)
                }
            });
            by_host.or(by_ip).map(str::to_owned)
        }
        Scope::Cluster | Scope::Local => None,
    }
}

/// Fills `component` on both ends where attribution left it empty.
pub fn fill_components(model: &Architecture, record: &mut FlowRecord) {
    if record.src.component.is_none() {
        record.src.component = outside_party(model, &record.src, true);
    }
    if record.dst.component.is_none() {
        record.dst.component = outside_party(model, &record.dst, false);
    }
}
