//! How `status` shows its result: one table a person can read at 200
//! hosts (hosts with problems first, each problem on a `!` line under its
//! host; healthy hosts folded into a count unless `-v`), or one JSON object
//! per host and a summary for `--json`.

use super::probe::Disk;
use super::{fmt_kb, parse_rfc3339, HostStatus, ServiceStatus};
use std::collections::BTreeSet;

/// `3d4h`, `5h12m`, `12m`, `40s`.
pub(crate) fn fmt_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

/// The disk column: `/ 41%`, and Docker's root when it is another filesystem.
fn disk_cell(disks: &[Disk]) -> String {
    let mut seen = BTreeSet::new();
    disks
        .iter()
        .filter(|d| seen.insert(d.mount.clone()))
        .map(|d| format!("{} {}%", d.path, d.percent_free()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `2h5m ago running root@ctl` (the time of day for older audit lines).
/// `3h ago ok`, `10m ago FAILED`.
fn backup_cell(b: &super::probe::LastBackup, now: i64) -> String {
    let result = if b.ok { "ok" } else { "FAILED" };
    format!("{} ago {result}", fmt_age(now - b.at))
}

fn deploy_cell(v: &serde_json::Value, now: i64) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    let when = v["at"]
        .as_str()
        .and_then(parse_rfc3339)
        .map_or_else(|| s("time"), |t| format!("{} ago", fmt_age(now - t)));
    format!("{when} {} {}", s("result"), s("who"))
}

/// The image column: the tag of mesh's own image of the service, else the image.
fn image_cell(service: &str, image: &str) -> String {
    image
        .strip_prefix(&format!("mesh/{service}:"))
        .map_or_else(|| image.to_string(), str::to_string)
}

fn state_cell(s: &ServiceStatus) -> String {
    match &s.container {
        // A stopped container keeps its last health: not worth showing.
        Some(c) if c.status == "exited" => format!("exited ({})", c.exit_code),
        Some(c) if !c.health.is_empty() => format!("{} ({})", c.status, c.health),
        Some(c) => c.status.clone(),
        None => "missing".into(),
    }
}

fn slot_cell(s: &ServiceStatus) -> String {
    match (s.slot, s.port) {
        (Some(slot), Some(p)) => format!("{slot} :{p}"),
        (Some(slot), None) => slot.to_string(),
        (None, Some(p)) => format!(":{p}"),
        (None, None) => "-".into(),
    }
}

const HEADER: [&str; 9] = [
    "HOST",
    "SERVICE",
    "SLOT",
    "IMAGE",
    "STATE",
    "UP",
    "LAST DEPLOY",
    "LAST BACKUP",
    "DISK FREE",
];

/// The table: failed hosts first, then hosts with problems, then (with
/// `verbose`) healthy ones; a count line at the end.
pub(crate) fn render(hosts: &[HostStatus], verbose: bool) -> String {
    let mut order: Vec<&HostStatus> = hosts.iter().filter(|h| verbose || !h.is_ok()).collect();
    order.sort_by_key(|h| (h.error.is_none(), h.is_ok()));
    let mut rows: Vec<[String; 9]> = vec![HEADER.map(String::from)];
    // After which row the problems of a host go.
    let mut notes: Vec<(usize, Vec<String>)> = Vec::new();
    for h in order {
        let disk = disk_cell(&h.disks);
        if h.services.is_empty() {
            let state = if h.error.is_some() { "FAILED" } else { "-" };
            rows.push([
                h.host.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                state.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                disk.clone(),
            ]);
        }
        for (i, s) in h.services.iter().enumerate() {
            let first = i == 0;
            rows.push([
                if first { h.host.clone() } else { String::new() },
                s.service.clone(),
                slot_cell(s),
                s.image
                    .as_deref()
                    .map_or_else(|| "-".into(), |img| image_cell(&s.service, img)),
                state_cell(s),
                s.uptime.map_or_else(|| "-".into(), fmt_age),
                s.last_deploy
                    .as_ref()
                    .map_or_else(|| "-".into(), |d| deploy_cell(d, h.now)),
                s.last_backup
                    .as_ref()
                    .map_or_else(|| "-".into(), |b| backup_cell(b, h.now)),
                if first { disk.clone() } else { String::new() },
            ]);
        }
        let problems = h.all_problems();
        if !problems.is_empty() {
            notes.push((rows.len() - 1, problems));
        }
    }
    let mut widths = [0usize; 9];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    if rows.len() > 1 {
        for (i, r) in rows.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            for (_, problems) in notes.iter().filter(|(at, _)| *at == i) {
                for p in problems {
                    out.push_str(&format!("  ! {p}\n"));
                }
            }
        }
    }
    out.push_str(&summary_line(hosts, verbose));
    out
}

/// `5 hosts: 3 healthy (-v lists them), 1 with problems, 1 failed`.
fn summary_line(hosts: &[HostStatus], verbose: bool) -> String {
    let (healthy, failed) = counts(hosts);
    let with_problems = hosts.len() - healthy - failed;
    let fold = if verbose || healthy == 0 {
        ""
    } else {
        " (-v lists them)"
    };
    format!(
        "{} hosts: {healthy} healthy{fold}, {with_problems} with problems, {failed} failed\n",
        hosts.len()
    )
}

/// (healthy, failed) hosts.
fn counts(hosts: &[HostStatus]) -> (usize, usize) {
    let healthy = hosts.iter().filter(|h| h.is_ok()).count();
    let failed = hosts.iter().filter(|h| h.error.is_some()).count();
    (healthy, failed)
}

/// One host as a JSON event (`--json`).
pub(crate) fn host_json(h: &HostStatus) -> serde_json::Value {
    let services: Vec<serde_json::Value> = h
        .services
        .iter()
        .map(|s| {
            let c = s.container.as_ref();
            serde_json::json!({
                "service": s.service,
                "slot": s.slot.map(|x| x.to_string()),
                "port": s.port,
                "image": s.image,
                "state": c.map(|c| c.status.clone()),
                "health": c.and_then(|c| (c.status == "running" && !c.health.is_empty()).then(|| c.health.clone())),
                "exit_code": c.filter(|c| c.status == "exited").map(|c| c.exit_code),
                "started_at": c.map(|c| c.started_at.clone()),
                "uptime_seconds": s.uptime,
                "last_deploy": s.last_deploy,
                "last_backup": s.last_backup.as_ref().map(|b| serde_json::json!({
                    "at": b.at,
                    "ok": b.ok,
                    "detail": b.detail,
                })),
                "problems": s.problems,
            })
        })
        .collect();
    let disks: Vec<serde_json::Value> = h
        .disks
        .iter()
        .map(|d| {
            serde_json::json!({
                "path": d.path, "mount": d.mount, "size_kb": d.size_kb,
                "avail_kb": d.avail_kb, "free_percent": d.percent_free(),
                "free": fmt_kb(d.avail_kb),
            })
        })
        .collect();
    serde_json::json!({
        "event": "host_status",
        "host": h.host,
        "ok": h.is_ok(),
        "error": h.error,
        "services": services,
        "routes": h.routes,
        "disks": disks,
        "units": h.units,
        "overlay": h.overlay.map(|o| serde_json::json!({
            "assigned": o.assigned, "peer_answers": o.peer_answers,
        })),
        "problems": h.all_problems(),
    })
}

/// The closing JSON event.
pub(crate) fn summary_json(hosts: &[HostStatus], seconds: f64) -> serde_json::Value {
    let (healthy, failed) = counts(hosts);
    serde_json::json!({
        "event": "status_summary",
        "hosts": hosts.len(),
        "healthy": healthy,
        "with_problems": hosts.len() - healthy - failed,
        "failed": failed,
        "ok": !hosts.is_empty() && healthy == hosts.len(),
        "seconds": (seconds * 100.0).round() / 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{read, HEALTHY};
    use super::super::{services, HostStatus};
    use super::*;

    fn ok(h: &str) -> HostStatus {
        let read = read(HEALTHY);
        HostStatus {
            host: h.into(),
            now: read.now,
            services: services(&read, Some("web")),
            disks: read.disks.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn a_backup_cell_says_when_and_how_it_ended() {
        let b = |ok| super::super::probe::LastBackup {
            at: 1000,
            ok,
            detail: String::new(),
        };
        assert_eq!(backup_cell(&b(true), 1000 + 3 * 3600 + 300), "3h5m ago ok");
        assert_eq!(backup_cell(&b(false), 1600), "10m ago FAILED");
    }

    #[test]
    fn ages() {
        assert_eq!(fmt_age(-3), "0s");
        assert_eq!(fmt_age(40), "40s");
        assert_eq!(fmt_age(720), "12m");
        assert_eq!(fmt_age(5 * 3600 + 12 * 60), "5h12m");
        assert_eq!(fmt_age(3 * 86_400 + 4 * 3600), "3d4h");
    }

    #[test]
    fn the_table_puts_problems_first_and_folds_healthy_hosts() {
        let mut bad = ok("w2");
        bad.problems
            .push("web: route on b1 points at :8000, host says :8001".into());
        let failed = HostStatus {
            host: "w3".into(),
            error: Some("cannot connect".into()),
            ..Default::default()
        };
        let hosts = vec![ok("w1"), bad, failed];
        assert_eq!(
            render(&hosts, false),
            "\
HOST  SERVICE  SLOT     IMAGE  STATE              UP  LAST DEPLOY              LAST BACKUP  DISK FREE
w3    -        -        -      FAILED             -   -                        -
  ! failed: cannot connect
w2    web      b :8001  2      running (healthy)  3m  3m ago running root@ctl  -            / 24%
  ! web: route on b1 points at :8000, host says :8001
3 hosts: 1 healthy (-v lists them), 1 with problems, 1 failed
"
        );
        let all = render(&hosts, true);
        assert!(all.contains("\nw1    web"), "{all}");
        assert!(
            all.ends_with("3 hosts: 1 healthy, 1 with problems, 1 failed\n"),
            "{all}"
        );
        assert_eq!(
            render(&[ok("w1")], false),
            "1 hosts: 1 healthy (-v lists them), 0 with problems, 0 failed\n"
        );
    }

    #[test]
    fn json_has_one_event_per_host_and_a_summary() {
        let mut bad = ok("w2");
        bad.problems.push("low disk".into());
        let json = host_json(&bad);
        assert_eq!(json["event"], "host_status");
        assert_eq!(json["ok"], false);
        assert_eq!(json["services"][0]["slot"], "b");
        assert_eq!(json["services"][0]["port"], 8001);
        assert_eq!(json["services"][0]["health"], "healthy");
        assert_eq!(json["problems"], serde_json::json!(["low disk"]));
        let sum = summary_json(&[ok("w1"), bad], 1.234);
        assert_eq!(sum["healthy"], 1);
        assert_eq!(sum["with_problems"], 1);
        assert_eq!(sum["ok"], false);
        assert_eq!(sum["seconds"], 1.23);
        assert_eq!(
            summary_json(&[], 0.0)["ok"],
            false,
            "nothing read is not fine"
        );
    }

    #[test]
    fn a_stopped_copy_shows_its_exit_code_not_its_last_health() {
        let read = read("web|mesh-web-b|exited|unhealthy|2025-12-02T07:40:00Z|137|mesh/web:2");
        let web = &services(&read, Some("web"))[0];
        assert_eq!(state_cell(web), "exited (137)");
        assert_eq!(
            host_json(&HostStatus {
                services: vec![web.clone()],
                ..Default::default()
            })["services"][0]["health"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn an_old_audit_line_shows_its_time_of_day() {
        let v = serde_json::json!({"time": "07:40:01", "who": "a@b", "result": "running"});
        assert_eq!(deploy_cell(&v, 0), "07:40:01 running a@b");
    }
}
