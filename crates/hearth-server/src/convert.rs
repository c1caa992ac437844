//! Between the API's types ([`hearth_api`]) and the node's: the wire stays independent of
//! the node's internals, and the rules that need the node (limit ranges, egress rule
//! syntax) are applied here.

use hearth_api::{
    EgressEdit, EgressInfo, IdRange, Image, LimitsRequest, NetworkInfo, Snapshot, UsageInfo,
    Workspace, WorkspaceInspect, WorkspaceLimits,
};
use hearth_node::{ImageSummary, Limits, SnapshotSummary, WorkspaceDetails};

pub fn image(s: ImageSummary) -> Image {
    Image {
        id: s.id,
        names: s.names,
        size: s.size,
        layers: s.layers,
        loaded_at: s.loaded_at,
    }
}

pub fn limits(l: Limits) -> WorkspaceLimits {
    WorkspaceLimits {
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        cpu_weight: l.cpu_weight,
        disk_bytes: l.disk_bytes,
        cpus_milli: l.cpus_milli,
    }
}

pub fn cpu(v: hearth_node::CpuView) -> hearth_api::CpuInfo {
    use hearth_api::CpuClass as A;
    use hearth_node::CpuClass as N;
    hearth_api::CpuInfo {
        class: match v.class {
            N::Interactive => A::Interactive,
            N::Batch => A::Batch,
            N::Limited => A::Limited,
            N::Unmanaged => A::Unmanaged,
        },
        weight: v.weight,
        quota_millicores: v.quota_millicores,
        idle: v.idle,
        usage_millicores: v.usage_millicores,
        budget_ms: v.budget_ms,
        throttled_us_total: v.throttled_us_total,
        pressure_some_avg10: v.pressure_some_avg10,
        since: v.since,
    }
}

pub fn snapshot(s: SnapshotSummary) -> Snapshot {
    Snapshot {
        id: s.id,
        time: s.time,
        parent: s.parent,
        size: s.size,
        files: s.files,
        new_bytes: s.new_bytes,
    }
}

/// The record plus what the node sees on the host.
pub fn store_use(u: hearth_node::StoreUsage) -> hearth_api::StoreUse {
    hearth_api::StoreUse {
        snapshots: u.snapshots,
        referenced_bytes: u.referenced_bytes,
        unique_bytes: u.unique_bytes,
    }
}

pub fn inspect(
    workspace: Workspace,
    d: WorkspaceDetails,
    store: Option<hearth_node::StoreUsage>,
) -> WorkspaceInspect {
    let count = d.id_count.max(1);
    WorkspaceInspect {
        workspace,
        pid: d.pid,
        uid_range: IdRange {
            first: d.uid_base,
            last: d.uid_base.saturating_add(count - 1),
        },
        cgroups: d
            .cgroups
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        network: d.network.map(|n| NetworkInfo {
            ip: n.ip.to_string(),
            prefix_len: n.prefix_len,
            gateway: n.gateway.to_string(),
            bridge: n.bridge,
            host_veth: n.host_veth,
            netns: n.netns.to_string_lossy().into_owned(),
        }),
        egress: EgressInfo {
            deny: d.egress.deny,
            node_deny: d.egress.node_deny,
            rate: d.egress.rate,
            burst: d.egress.burst,
            max_conns: d.egress.max_conns,
        },
        usage: UsageInfo {
            cpu_ns: d.usage.cpu_ns,
            cpu_percent: d.usage.cpu_percent,
            memory_bytes: d.usage.memory_bytes,
            memory_high_bytes: d.usage.memory_high_bytes,
            oom_kill_count: d.usage.oom_kill_count,
            pids: d.usage.pids,
            disk_bytes: d.usage.disk_bytes,
            disk_size: d.usage.disk_size,
        },
        store: store.map(store_use),
        paused: d.paused,
        oom_kills: d
            .oom_kills
            .into_iter()
            .map(|k| hearth_api::OomKillInfo {
                at: k.at,
                pid: k.pid,
                host_pid: k.host_pid,
                process: k.process,
                limit_bytes: k.limit_bytes,
            })
            .collect(),
        cpu: d.cpu.map(cpu),
        hydration: d.hydration.map(|h| hearth_api::HydrationInfo {
            snapshot: h.snapshot,
            active: h.active,
            files_total: h.files_total,
            files_done: h.files_done,
            bytes_total: h.bytes_total,
            bytes_done: h.bytes_done,
            failures: h.failures,
            last_error: h.last_error,
        }),
        devcontainer: None,
    }
}

/// The limits a create asks for (absent ones: the default), or what is wrong with them.
pub fn resolve_limits(req: &LimitsRequest) -> Result<Limits, String> {
    apply_limits(req, Limits::default())
}

/// `current` with the fields `req` sets replaced, or what is wrong with the request.
pub fn apply_limits(req: &LimitsRequest, current: Limits) -> Result<Limits, String> {
    let d = current;
    let check = |what: &str, v: Option<u64>, lo: u64, hi: u64, def: u64| match v {
        None => Ok(def),
        Some(v) if (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err(format!("{what} {v} is out of range ({lo}..={hi})")),
    };
    Ok(Limits {
        memory_bytes: check(
            "memory_bytes",
            req.memory_bytes,
            64 << 20,
            1 << 50,
            d.memory_bytes,
        )?,
        pids: check("pids", req.pids, 16, 1_000_000, d.pids)?,
        cpu_weight: check("cpu_weight", req.cpu_weight, 1, 10_000, d.cpu_weight)?,
        disk_bytes: check(
            "disk_bytes",
            req.disk_bytes,
            hearth_node::MIN_DISK_BYTES,
            hearth_node::MAX_DISK_BYTES,
            d.disk_bytes,
        )?,
        // 10 millicores is the smallest CFS quota (1 ms per 100 ms period).
        cpus_milli: match req.cpus_milli {
            Some(0) => 0,
            v => check("cpus_milli", v, 10, 1_000_000, d.cpus_milli)?,
        },
    })
}

/// The deny list after `edit` from `current`; added rules are kept as given, so a parse
/// error names them as the user typed them.
pub fn apply_egress_edit(edit: &EgressEdit, current: &[String]) -> Result<Vec<String>, String> {
    let canon = |r: &str| -> Result<String, String> {
        r.parse::<hearth_node::EgressRule>()
            .map(|r| r.to_string())
            .map_err(|e| e.to_string())
    };
    let mut out: Vec<String> = if edit.allow_all {
        Vec::new()
    } else {
        current.to_vec()
    };
    for r in &edit.undeny {
        let c = canon(r)?;
        let before = out.len();
        out.retain(|x| canon(x).map_or(true, |x| x != c));
        if before == out.len() && !edit.allow_all {
            return Err(format!("{c} is not in the deny list of this workspace"));
        }
    }
    out.extend(edit.deny.iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_edits_change_the_list() {
        let cur = vec!["10.0.0.0/8".to_string(), "192.0.2.7/32".to_string()];
        let ch = EgressEdit {
            deny: vec!["198.51.100.0/24".into()],
            undeny: vec!["192.0.2.7".into()],
            allow_all: false,
        };
        assert_eq!(
            apply_egress_edit(&ch, &cur).unwrap(),
            vec!["10.0.0.0/8", "198.51.100.0/24"]
        );
        let all = EgressEdit {
            allow_all: true,
            ..Default::default()
        };
        assert!(apply_egress_edit(&all, &cur).unwrap().is_empty());
        let missing = EgressEdit {
            undeny: vec!["1.2.3.4".into()],
            ..Default::default()
        };
        let e = apply_egress_edit(&missing, &cur).unwrap_err();
        assert!(e.contains("1.2.3.4/32 is not in the deny list"), "{e}");
        let bad = EgressEdit {
            undeny: vec!["1.2.3.4/40".into()],
            ..Default::default()
        };
        assert!(apply_egress_edit(&bad, &cur)
            .unwrap_err()
            .contains("prefix length"));
        assert!(EgressEdit::default().is_empty());
    }
}
