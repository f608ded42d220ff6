//! Integration tests: the built `mesh` binary against real lab hosts
//! (Debian containers running systemd and sshd on a private docker network).
//! Every test starts its own hosts on its own slot, so tests run in parallel.

mod util;

use util::{DebMirror, Lab, Mesh};

#[test]
fn exec_runs_on_every_host_and_shows_each_output() {
    let lab = Lab::start("exec", 3, 21);
    let run = lab
        .mesh()
        .args(["exec", "--", "hostname;", "id -u"])
        .run()
        .ok();
    for host in lab.hosts() {
        assert!(
            run.stdout.contains(&format!("[{host}] {host}")),
            "no output line from {host}:\n{}",
            run.stdout
        );
        assert!(
            run.stdout.contains(&format!("[{host}] 0")),
            "{}",
            run.stdout
        );
        // A fresh known_hosts: each key is trusted once, visibly.
        assert!(
            run.stdout
                .contains(&format!("{host}: trusting new host key SHA256:")),
            "{}",
            run.stdout
        );
    }
    let again = lab.mesh().args(["exec", "--", "true"]).run().ok();
    assert!(
        !again.stdout.contains("trusting new host key"),
        "{}",
        again.stdout
    );
    // --limit picks by host glob.
    let one = lab
        .mesh()
        .args(["--limit", &lab.host(2), "exec", "--", "hostname"])
        .run()
        .ok();
    assert!(one.stdout.contains(&format!("[{0}] {0}", lab.host(2))));
    assert!(!one.stdout.contains(&format!("[{}]", lab.host(1))));

    // On a terminal the bar counts hosts as they finish and drops finished
    // hosts from its active lines: read the frames through a pty.
    let frames = util::in_pty(&[
        "-i",
        lab.inventory().to_str().unwrap(),
        "exec",
        "--",
        &format!(
            "case $(hostname) in {}) sleep 3;; {}) sleep 6;; esac",
            lab.host(2),
            lab.host(3)
        ),
    ]);
    let one = frames
        .find("1/3 hosts")
        .unwrap_or_else(|| panic!("the bar never showed 1/3 hosts:\n{frames}"));
    let two = frames
        .find("2/3 hosts")
        .unwrap_or_else(|| panic!("the bar never showed 2/3 hosts:\n{frames}"));
    assert!(one < two, "{frames}");
    let first_done = format!("{}: exec", lab.host(1));
    assert!(
        !frames[two..].contains(&first_done),
        "{} still listed as active after it finished:\n{frames}",
        lab.host(1)
    );
    assert!(
        frames[..two].contains(&format!("{}: exec", lab.host(3))),
        "{frames}"
    );

    // Every remote command has a deadline: past it the command is killed on
    // the host and its host fails; the others finish.
    let t0 = std::time::Instant::now();
    let slow = lab
        .mesh()
        .args(["--json", "--command-timeout", "5", "exec", "--"])
        .args([&format!(
            "if [ $(hostname) = {} ]; then sleep infinity; else echo quick; fi",
            lab.host(1)
        )])
        .run()
        .expect_code(1);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
    util::assert_only_failed(&slow.summary(), &lab.host(1), "did not finish within 5 s");
    let left = lab.on(1, "pgrep -af 'sleep infinit[y]' || true");
    assert_eq!(left.stdout.trim(), "", "sleep left on the host");

    // Ctrl-C stops everything the run started: exit 130 within 2 s, no ssh
    // process of the run left behind.
    let mut child = lab.mesh().args(["exec", "--", "sleep", "30"]).spawn();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = child.id().to_string();
    let t0 = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "still running 2 s after SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let ssh = std::process::Command::new("pgrep")
        .args(["-af", &format!("mesh-{pid}-[0-9a-f]")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout).trim(),
        "",
        "ssh processes of the run left"
    );
}

#[test]
fn a_stopped_host_fails_alone_and_is_named_in_the_summary() {
    let lab = Lab::start("down", 3, 22);
    lab.docker(&["stop", "-t", "1", &lab.host(2)]);
    let run = lab
        .mesh()
        .args([
            "--connect-timeout",
            "3",
            "--json",
            "exec",
            "--",
            "echo",
            "alive",
        ])
        .run()
        .expect_code(1);
    let summary = run.summary();
    assert_eq!(summary["hosts"].as_array().unwrap().len(), 3);
    util::assert_only_failed(&summary, &lab.host(2), "cannot connect");
    assert_eq!(summary["failed"], 1);
    // The human summary names the host too.
    let plain = lab
        .mesh()
        .args(["--connect-timeout", "3", "exec", "--", "true"])
        .run()
        .expect_code(1);
    let line = plain
        .stdout
        .lines()
        .find(|l| l.contains(&lab.host(2)) && l.contains("FAILED"))
        .unwrap_or_else(|| panic!("summary does not name the host:\n{}", plain.stdout));
    assert!(line.contains("cannot connect"), "{line}");
}

#[test]
fn nodes_basic_dry_run_then_converge_then_nothing_changes() {
    let lab = Lab::start("basic", 2, 23);

    // --dry-run: reports what would change, touches nothing.
    let dry = lab
        .mesh()
        .args(["--dry-run", "--json", "nodes", "--only", "basic"])
        .run()
        .ok();
    let s = dry.summary();
    for h in s["hosts"].as_array().unwrap() {
        assert!(h["would_change"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(h["changed"], 0, "{h}");
    }
    for i in 1..=2 {
        let state = lab.on(
            i,
            "test -e /var/lib/mesh && echo mesh-state; command -v ufw; \
             test -e /etc/systemd/journald.conf.d/mesh.conf && echo dropin; true",
        );
        assert_eq!(state.stdout.trim(), "", "dry run touched host {i}");
    }

    // First real run: changes things.
    let first = lab
        .mesh()
        .args(["--json", "nodes", "--only", "basic"])
        .run()
        .ok();
    let s = first.summary();
    for h in s["hosts"].as_array().unwrap() {
        assert!(h["changed"].as_u64().unwrap() > 0, "{h}");
    }
    for i in 1..=2 {
        let ufw = lab.on(i, "ufw status verbose").stdout;
        assert!(ufw.contains("Status: active"), "{ufw}");
        assert!(ufw.contains("deny (incoming)"), "{ufw}");
        let rules = lab.on(i, "ufw show added").stdout;
        let lines: Vec<&str> = rules.lines().skip(1).collect();
        assert_eq!(
            lines.first(),
            Some(&"ufw allow 22/tcp"),
            "SSH first: {rules}"
        );
        for r in [
            "80/tcp",
            "443/tcp",
            "3900/tcp",
            "3901/tcp",
            "3902/tcp",
            "7946",
            "51820/udp",
        ] {
            assert!(
                lines.contains(&format!("ufw allow {r}").as_str()),
                "{r}: {rules}"
            );
        }
        let conf = lab
            .on(i, "cat /etc/systemd/journald.conf.d/mesh.conf")
            .stdout;
        assert!(conf.contains("SystemMaxUse=100M"), "{conf}");
        let rotate = lab.on(i, "grep '^rotate' /etc/logrotate.conf").stdout;
        assert_eq!(rotate.trim(), "rotate 2");
        // The dead-man timer was armed, then cancelled after the fresh login succeeded.
        let timer = lab
            .on(i, "systemctl is-active mesh-ufw-deadman.timer")
            .stdout;
        assert_ne!(timer.trim(), "active");
        let journal = lab
            .on(
                i,
                "journalctl --no-pager -o cat | grep mesh-ufw-deadman.timer",
            )
            .stdout;
        let started = journal.find("Started mesh-ufw-deadman.timer");
        let stopped = journal.find("Stopped mesh-ufw-deadman.timer");
        assert!(started.is_some() && started < stopped, "{journal}");
    }

    // Re-run on the converged hosts: 0 changed, said plainly.
    let again = lab.mesh().args(["nodes", "--only", "basic"]).run().ok();
    assert!(
        again.stdout.contains("2 hosts: 0 changed, 0 failed"),
        "{}",
        again.stdout
    );
    for host in lab.hosts() {
        let line = again
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&host) && l.contains("0 changed"))
            .unwrap_or_else(|| panic!("{host} not reported unchanged:\n{}", again.stdout));
        assert!(line.contains(" ok"), "{line}");
    }

    // Drift shows as a diff in --dry-run and changes nothing.
    lab.on(
        1,
        "sed -i 's/^SystemMaxUse=.*/SystemMaxUse=5G/' /etc/systemd/journald.conf.d/mesh.conf",
    );
    let diff = lab
        .mesh()
        .args(["--dry-run", "nodes", "--only", "basic"])
        .run()
        .ok();
    for line in [
        "--- /etc/systemd/journald.conf.d/mesh.conf (current)",
        "-SystemMaxUse=5G",
        "+SystemMaxUse=100M",
    ] {
        assert!(diff.stdout.contains(line), "{line}:\n{}", diff.stdout);
    }
    let conf = lab
        .on(1, "cat /etc/systemd/journald.conf.d/mesh.conf")
        .stdout;
    assert!(
        conf.contains("SystemMaxUse=5G"),
        "dry run changed it: {conf}"
    );

    // Drift is repaired: a deleted drop-in comes back, only that changes.
    lab.on(1, "rm /etc/systemd/journald.conf.d/mesh.conf");
    let repair = lab
        .mesh()
        .args(["--json", "nodes", "--only", "basic"])
        .run()
        .ok();
    let s = repair.summary();
    let h1 = &s["hosts"].as_array().unwrap()[0];
    assert_eq!(h1["host"], lab.host(1));
    // The file and the journald restart it triggers.
    assert_eq!(h1["changed"], 2, "{h1}");
    assert_eq!(s["hosts"][1]["changed"], 0);
}

#[test]
fn a_firewall_that_would_lock_out_ssh_is_rolled_back() {
    let lab = Lab::start("lockout", 1, 24);
    // Tell mesh sshd listens on 2222: the rule set then blocks the real port 22.
    let inv = lab.write_inventory("lockout.yml", |text| {
        format!("firewall: {{ ssh_port: {DEADMAN_TEST_PORT}, deadman_seconds: {DEADMAN_TEST_SECONDS} }}\n{text}")
    });
    let run = Mesh::new(&inv)
        .args(["--connect-timeout", "4", "nodes", "--only", "basic"])
        .run()
        .expect_code(1);
    assert!(
        run.stdout.contains("fresh SSH login failed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("disabled the firewall again"),
        "{}",
        run.stdout
    );
    // A brand-new connection gets in again, and ufw is off.
    lab.mesh().args(["exec", "--", "true"]).run().ok();
    let ufw = lab.on(1, "ufw status").stdout;
    assert!(ufw.contains("inactive"), "{ufw}");

    // What the timer is for: mesh itself is gone (killed, laptop lid closed)
    // after enabling the firewall and before confirming a fresh login. A long
    // connect timeout keeps mesh waiting on that login while it is killed.
    let tmp = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new(&inv)
        .env("TMPDIR", tmp.path())
        .args(["--connect-timeout", "60", "nodes", "--only", "basic"])
        .spawn();
    util::eventually_within(60, || {
        let status = lab.on(1, "ufw status").stdout;
        status
            .contains("Status: active")
            .then_some(())
            .ok_or(status)
    });
    mesh.kill().unwrap();
    mesh.wait().unwrap();
    // Its ssh master too: nothing of mesh is left to roll back.
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f"])
        .arg(tmp.path())
        .status();
    util::eventually_within(DEADMAN_TEST_SECONDS + 30, || {
        let status = lab.on(1, "ufw status").stdout;
        status.contains("inactive").then_some(()).ok_or(status)
    });
    let journal = lab
        .on(1, "journalctl --no-pager -u mesh-ufw-deadman.service")
        .stdout;
    assert!(
        journal.contains("Firewall stopped and disabled"),
        "the dead-man unit disabled ufw: {journal}"
    );
    lab.mesh().args(["exec", "--", "true"]).run().ok();
}

/// The lockout test's firewall: allows a port sshd does not listen on.
const DEADMAN_TEST_PORT: u16 = 2222;
const DEADMAN_TEST_SECONDS: u64 = 30;

#[test]
fn bad_input_touches_nothing_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yml");
    std::fs::write(
        &inv,
        "groups:\n  web:\n    hosts:\n      web-1: { address: 10.77.250.1, zone: a, traefik_host: edge-9 }\n",
    )
    .unwrap();
    let run = Mesh::new(&inv)
        .args(["exec", "--", "true"])
        .run()
        .expect_code(2);
    assert!(run.stderr.contains("inventory.yml:4:"), "{}", run.stderr);
    assert!(run.stderr.contains("edge-9"), "{}", run.stderr);
    assert!(run.stderr.contains("Fix:"), "{}", run.stderr);
    assert!(
        !dir.path().join(".mesh").exists(),
        "nothing is written on bad input"
    );

    let run = Mesh::new(&inv)
        .args(["nodes", "--only", "nosuchstep"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr.contains("edge-9"),
        "inventory is checked first: {}",
        run.stderr
    );

    // A problem found after the run is set up (a missing asset) still leaves
    // nothing behind: no control-socket directory in TMPDIR for a later run
    // with a recycled pid to trip over.
    std::fs::write(
        &inv,
        "groups:\n  web:\n    hosts:\n      web-1: { address: 10.77.250.1, zone: a, arch: x86_64 }\n",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let assets = tempfile::tempdir().unwrap();
    let run = Mesh::new(&inv)
        .env("TMPDIR", tmp.path())
        .args(["--assets"])
        .args([assets.path()])
        .args(["nodes", "--first-ip", "10.77.250.1", "--only", "wesher"])
        .run()
        .expect_code(2);
    assert_eq!(
        run.stderr.matches("host web-1 step wesher:").count(),
        1,
        "each problem once: {}",
        run.stderr
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[test]
fn docker_comes_from_pinned_debs_and_a_corrupt_deb_is_refused() {
    let mirror = DebMirror::start(&util::docker_packages(util::SUITE));
    let lab = Lab::start("docker", 1, 25);
    let cache = tempfile::tempdir().unwrap();
    let inv = lab.write_inventory("docker.yml", |text| mirror.docker_inventory(text));
    let mesh = || Mesh::new(&inv).env("MESH_CACHE", cache.path());

    // An index changed after signing (one byte) is refused before any host
    // is touched (exit 2): nothing installed, nothing pinned.
    let index = std::fs::read(mirror.packages_index()).unwrap();
    let mut tampered = index.clone();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(mirror.packages_index(), &tampered).unwrap();
    let refused = mesh()
        .args(["--json", "nodes", "--only", "docker"])
        .run()
        .expect_code(2);
    let summary = refused.summary();
    assert_eq!(summary["changed"], 0, "{}", refused.stdout);
    let err = summary["hosts"][0]["failed"].as_str().unwrap();
    assert!(
        err.contains("signed InRelease")
            && err.contains("sha256")
            && err.contains("no host was touched"),
        "{err}"
    );
    assert!(!inv.parent().unwrap().join("docker.lock").exists());
    let installed = lab.on(1, "dpkg-query -W -f='${Status}' docker.io 2>&1 || true");
    assert!(
        !installed.stdout.contains("install ok installed"),
        "{installed:?}"
    );
    std::fs::write(mirror.packages_index(), &index).unwrap();

    let first = mesh()
        .args(["--json", "nodes", "--only", "docker"])
        .run()
        .ok();
    assert!(
        first.summary()["changed"].as_u64().unwrap() > 0,
        "{}",
        first.stdout
    );
    // The lock pins exactly what the mirror's index said.
    let lock = std::fs::read_to_string(inv.parent().unwrap().join("docker.lock")).unwrap();
    let index = std::fs::read_to_string(mirror.packages_index()).unwrap();
    for pkg in util::docker_packages(util::SUITE) {
        assert!(lock.contains(&format!("name: {pkg}")), "{lock}");
    }
    for sha in index.lines().filter_map(|l| l.strip_prefix("SHA256: ")) {
        assert!(lock.contains(sha), "{sha} not pinned:\n{lock}");
    }
    // No apt repository was added; docker runs a container (host network,
    // as mesh's services run: Docker 26's bridge setup needs IPv6 sysctls a
    // lab host cannot write).
    let sources = lab.on(
        1,
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null",
    );
    assert!(!sources.stdout.contains("127.0.0.1"), "{}", sources.stdout);
    let run = lab.on(
        1,
        "tar -C / -ch bin/echo lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2 \
         | docker import - mini >/dev/null && docker run --rm --network host mini /bin/echo container-ok",
    );
    assert_eq!(run.stdout.trim(), "container-ok", "{run:?}");

    let again = mesh().args(["nodes", "--only", "docker"]).run().ok();
    assert!(
        again.stdout.contains("1 hosts: 0 changed, 0 failed"),
        "{}",
        again.stdout
    );

    // A .deb that no longer matches its pin is refused before any host is touched.
    let mut deb = std::fs::OpenOptions::new()
        .append(true)
        .open(mirror.deb("runc"))
        .unwrap();
    std::io::Write::write_all(&mut deb, b"tampered").unwrap();
    let fresh_cache = tempfile::tempdir().unwrap();
    let refused = Mesh::new(&inv)
        .env("MESH_CACHE", fresh_cache.path())
        .args(["--json", "nodes", "--only", "docker"])
        .run()
        .expect_code(1);
    let summary = refused.summary();
    assert_eq!(summary["changed"], 0);
    let err = summary["hosts"][0]["failed"].as_str().unwrap();
    assert!(
        err.contains("sha256") && err.contains("no host was touched"),
        "{err}"
    );
}

/// An assets folder whose wesher is the test fixture (tests/fixtures/wesher-fixture).
fn fixture_assets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("x86_64");
    std::fs::create_dir_all(&arch).unwrap();
    std::fs::copy(
        util::repo_root().join("tests/fixtures/wesher-fixture"),
        arch.join("wesher"),
    )
    .unwrap();
    dir
}

#[test]
fn wesher_first_node_then_joiners_with_one_shared_key() {
    let lab = Lab::start("wesher", 3, 26);
    let assets = fixture_assets();
    let inv = lab.write_inventory("wesher.yml", |text| {
        text.replace(
            "zone: z3,",
            "zone: z3, behind_nat: true, public_ip: 10.77.26.13,",
        )
    });
    let first_ip = "10.77.26.11";
    let mesh = || {
        Mesh::new(&inv).env("MESH_ASSETS", assets.path()).args([
            "nodes",
            "--first-ip",
            first_ip,
            "--only",
            "wesher",
        ])
    };
    // Wrong host name on host 2: mesh sets it (wesher derives the overlay IP from it).
    lab.on(2, "hostname wrong-name");

    // Host 3 is behind NAT and its wesher lacks --advertise-addr: it alone fails.
    let run = mesh().args(["--json"]).run().expect_code(1);
    util::assert_only_failed(&run.summary(), &lab.host(3), "--advertise-addr");

    // With a patched build it joins, advertising its public address.
    lab.on(
        3,
        "mkdir -p /etc/wesher-fixture && touch /etc/wesher-fixture/patched",
    );
    mesh().run().ok();
    let again = mesh().run().ok();
    assert!(
        again.stdout.contains("3 hosts: 0 changed, 0 failed"),
        "{}",
        again.stdout
    );

    let key = util::secret(&inv, "WESHER_CLUSTER_KEY");
    assert_eq!(key.len(), 44, "32 bytes, base64");
    for i in 1..=3 {
        let env = lab
            .on(i, "stat -c %a /etc/default/wesher; cat /etc/default/wesher")
            .stdout;
        assert!(env.starts_with("600\n"), "{env}");
        assert!(env.contains(&format!("WESHER_CLUSTER_KEY={key}")), "{env}");
        if i == 1 {
            assert!(
                !env.contains("WESHER_JOIN"),
                "first node initialises: {env}"
            );
        } else {
            assert!(env.contains(&format!("WESHER_JOIN={first_ip}")), "{env}");
        }
        assert_eq!(
            env.contains("WESHER_ADVERTISE_ADDR=10.77.26.13"),
            i == 3,
            "{env}"
        );
        assert_eq!(lab.on(i, "hostname").stdout.trim(), lab.host(i));
        assert_eq!(
            lab.on(i, "systemctl is-active wesher").stdout.trim(),
            "active"
        );
        let unit = lab.on(i, "cat /etc/systemd/system/wesher.service").stdout;
        assert!(
            unit.contains("EnvironmentFile=-/etc/default/wesher"),
            "{unit}"
        );
        assert!(unit.contains("Restart=on-failure"), "{unit}");
        // The key never appears on a command line.
        let args = lab.on(i, "cat /var/lib/wesher/fixture-runs.jsonl").stdout;
        assert!(!args.contains(&key), "{args}");
    }
    // The first node was started before any other joined.
    // (ISO-8601 UTC timestamps compare as text.)
    let started = |i: usize| -> String {
        let runs = lab
            .on(i, "head -n 1 /var/lib/wesher/fixture-runs.jsonl")
            .stdout;
        let v: serde_json::Value = serde_json::from_str(runs.trim()).unwrap();
        v["start_time"]
            .as_str()
            .unwrap_or_else(|| panic!("no start_time in {v}"))
            .to_string()
    };
    assert!(started(1) < started(2), "first node first");
    assert!(started(1) < started(3), "first node first");
}

/// Assets with the wesher fixture and the real garage binary (built once, cached).
fn lab_assets() -> tempfile::TempDir {
    let assets = fixture_assets();
    let out = std::process::Command::new("bash")
        .arg(util::repo_root().join("tests/lab/garage.sh"))
        .output()
        .expect("tests/lab/garage.sh runs");
    assert!(
        out.status.success(),
        "no garage binary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let garage = String::from_utf8(out.stdout).unwrap();
    std::fs::copy(garage.trim(), assets.path().join("x86_64/garage")).unwrap();
    assets
}

/// Lab hosts with Docker whose firewall lets garage through between them
/// (install_docker's lets in SSH and HTTP only), and the assets with garage.
fn garage_lab(name: &str, count: usize, slot: u8) -> (Lab, tempfile::TempDir) {
    let lab = Lab::start(name, count, slot);
    lab.install_docker();
    let assets = lab_assets();
    for i in 1..=count {
        lab.on(i, &format!("ufw allow from 10.77.{slot}.0/24 >/dev/null"))
            .ok_or_log()
            .unwrap();
    }
    (lab, assets)
}

/// `garage layout show`'s current version on host `i`.
fn layout_version(lab: &Lab, i: usize) -> u64 {
    let show = lab.on(i, "garage layout show").stdout;
    show.lines()
        .find_map(|l| l.strip_prefix("Current cluster layout version: "))
        .unwrap_or_else(|| panic!("no version in:\n{show}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn nodes_brings_up_docker_overlay_and_a_3_zone_garage_then_joins_a_4th_host() {
    let mirror = DebMirror::start(&util::docker_packages(util::SUITE));
    let lab = Lab::start("nodes", 4, 27);
    let assets = lab_assets();
    let cache = tempfile::tempdir().unwrap();
    let with_mirror = |text: String| mirror.docker_inventory(text);
    let four = lab.write_inventory("nodes.yml", with_mirror);
    let host4 = format!("{}:", lab.host(4));
    let three = lab.write_inventory("nodes.yml.3", |text| {
        with_mirror(
            text.lines()
                .filter(|l| !l.contains(&host4))
                .map(|l| format!("{l}\n"))
                .collect(),
        )
    });
    // Same folder, so docker.lock and secrets.env are shared by both inventories.
    let mesh = |inv: &std::path::Path| {
        Mesh::new(inv)
            .env("MESH_CACHE", cache.path())
            .env("MESH_ASSETS", assets.path())
            .args(["nodes", "--first-ip", "10.77.27.11"])
    };

    // A dry run of the whole phase writes nothing, here or there.
    let dry = mesh(&three).args(["--dry-run"]).run().ok();
    assert!(
        dry.stdout.contains("would bootstrap the layout"),
        "{}",
        dry.stdout
    );
    let dir = four.parent().unwrap();
    assert!(!dir.join("docker.lock").exists() && !dir.join("secrets.env").exists());
    for i in 1..=3 {
        let left = lab.on(
            i,
            "ls -d /var/lib/mesh /etc/default/wesher /etc/garage.toml 2>/dev/null",
        );
        assert_eq!(left.stdout, "", "dry run touched host {i}");
    }

    mesh(&three).run().ok();
    let again = mesh(&three).run().ok();
    assert!(
        again.stdout.contains("3 hosts: 0 changed, 0 failed"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("layout unchanged (version 1)"),
        "{}",
        again.stdout
    );

    // Docker from the local mirror via the lock, on every host.
    let lock = std::fs::read_to_string(dir.join("docker.lock")).unwrap();
    for i in 1..=3 {
        let v = lab.on(i, "dpkg-query -W -f '${Version}' docker.io").stdout;
        assert!(
            lock.contains(&v),
            "docker.io {v} not the pinned one:\n{lock}"
        );
        assert_eq!(
            lab.on(i, "systemctl is-active docker wesher garage").stdout,
            "active\nactive\nactive\n"
        );
    }
    // A healthy 3-zone, 3-node garage.
    // (Garage gossips asynchronously: give a node's view a few seconds to settle.)
    let status = util::eventually(|| {
        let status = lab.on(2, "garage status").stdout;
        let healthy = !status.contains("FAILED NODES")
            && ["z1", "z2", "z3"].iter().all(|z| status.contains(z));
        healthy.then_some(status.clone()).ok_or(status)
    });
    let nodes = status
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|id| id.len() == 16))
        .count();
    assert_eq!(nodes, 3, "three healthy nodes:\n{status}");
    let show = lab.on(1, "garage layout show").stdout;
    for i in 1..=3 {
        assert!(show.contains(&format!("[{}]", lab.host(i))), "{show}");
    }
    assert_eq!(layout_version(&lab, 1), 1);
    let config = lab
        .on(2, "stat -c %a /etc/garage.toml; cat /etc/garage.toml")
        .stdout;
    assert!(config.starts_with("600\n"), "{config}");
    assert!(
        config.contains("rpc_public_addr = \"10.77.27.12:3901\""),
        "{config}"
    );
    assert!(
        config.contains("@10.77.27.11:3901\"]"),
        "bootstrap_peers = first node: {config}"
    );
    assert!(config.contains("db_engine = \"lmdb\""), "{config}");
    // One rpc_secret for the whole cluster.
    let secret = |i| lab.on(i, "grep rpc_secret /etc/garage.toml").stdout;
    assert_eq!(secret(1), secret(3));

    // S3: written through node 1, read back from node 3.
    let get = |k: &str| util::secret(&four, k);
    let s3 = format!(
        "curl -sS -f --aws-sigv4 aws:amz:garage:s3 --user {}:{} -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD'",
        get("GARAGE_KEY"),
        get("GARAGE_SECRET")
    );
    let put = format!("echo across-nodes > /tmp/o && {s3} -T /tmp/o http://127.0.0.1:3900/mesh/o");
    util::eventually(|| lab.on(1, &put).ok_or_log());
    let back = lab.on(3, &format!("{s3} http://127.0.0.1:3900/mesh/o"));
    assert_eq!(back.stdout.trim(), "across-nodes", "{back:?}");

    // The backups' and the images' buckets, each with its own key allowed on it
    // alone (from both sides: the key's buckets, the bucket's keys); the
    // images' key reads and writes but does not own its bucket.
    let json = |i: usize, script: &str| -> serde_json::Value {
        let out = lab.on(i, script);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{script}: {e}: {out:?}"))
    };
    for (bucket, id_var, owner) in [
        ("mesh-backups", "BACKUP_KEY", true),
        ("mesh-images", "IMAGES_KEY", false),
    ] {
        let key = json(
            2,
            &format!("garage json-api GetKeyInfo '{{\"search\":\"{bucket}\"}}'"),
        );
        assert_eq!(key["accessKeyId"], get(id_var), "key named {bucket}");
        let buckets = key["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 1, "{bucket}: {buckets:?}");
        assert_eq!(buckets[0]["globalAliases"], serde_json::json!([bucket]));
        let rights = serde_json::json!({ "read": true, "write": true, "owner": owner });
        assert_eq!(buckets[0]["permissions"], rights, "{bucket}");
        let info = json(
            2,
            &format!("garage json-api GetBucketInfo '{{\"globalAlias\":\"{bucket}\"}}'"),
        );
        let keys: Vec<&str> = info["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["accessKeyId"].as_str().unwrap())
            .collect();
        assert_eq!(keys, [get(id_var)], "{bucket}'s keys");
    }
    // Over S3: the images' key writes its bucket, and no other.
    let images_s3 = format!(
        "curl -sS -f --aws-sigv4 aws:amz:garage:s3 --user {}:{} -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD'",
        get("IMAGES_KEY"),
        get("IMAGES_SECRET")
    );
    let put = |bucket: &str| {
        lab.on(
            1,
            &format!("{images_s3} -T /tmp/o http://127.0.0.1:3900/{bucket}/o"),
        )
    };
    util::eventually(|| put("mesh-images").ok_or_log());
    for other in ["mesh", "mesh-backups"] {
        assert_ne!(put(other).code, 0, "the images' key wrote {other}");
    }

    // A 4th host joins; the others are not disturbed; exactly one new layout version.
    let join = mesh(&four).args(["--json"]).run().ok();
    let summary = join.summary();
    for h in summary["hosts"].as_array().unwrap() {
        let changed = h["changed"].as_u64().unwrap();
        if h["host"] == lab.host(4) {
            assert!(changed > 0, "{h}");
        } else {
            assert_eq!(changed, 0, "an existing host changed: {h}");
        }
    }
    assert_eq!(layout_version(&lab, 1), 2);
    let show = lab.on(4, "garage layout show").stdout;
    assert!(show.contains(&format!("[{}]", lab.host(4))), "{show}");
    let last = mesh(&four).run().ok();
    assert!(
        last.stdout.contains("4 hosts: 0 changed, 0 failed"),
        "{}",
        last.stdout
    );
    assert_eq!(
        layout_version(&lab, 1),
        2,
        "no new version without a change"
    );

    // Cluster secrets are read back, never regenerated over a live cluster:
    // without secrets.env the same run changes nothing, every node keeps
    // its rpc_secret, and secrets.env gets the cluster's own values back.
    let keys = [
        "RPC_SECRET",
        "WESHER_CLUSTER_KEY",
        "GARAGE_KEY",
        "GARAGE_SECRET",
        "BACKUP_KEY",
        "BACKUP_SECRET",
        "IMAGES_KEY",
        "IMAGES_SECRET",
    ];
    let saved: Vec<String> = keys.iter().map(|k| get(k)).collect();
    let rpc_before = secret(1);
    assert!(rpc_before.contains(&saved[0]), "{rpc_before}");
    std::fs::remove_file(dir.join("secrets.env")).unwrap();
    let ps = util::PsSampler::start(lab.host(1));
    let lost = mesh(&four).run().ok();
    let argv_seen = ps.finish();
    assert!(
        lost.stdout.contains("4 hosts: 0 changed, 0 failed"),
        "{}",
        lost.stdout
    );
    for i in 1..=4 {
        assert_eq!(secret(i), rpc_before, "rpc_secret of node {i}");
    }
    for (key, value) in keys.iter().zip(&saved) {
        assert_eq!(&get(key), value, "{key} read back");
        // Secrets reach the hosts on stdin, never on a command line.
        assert!(
            !argv_seen.contains(value.as_str()),
            "{key} in the process list of {}",
            lab.host(1)
        );
    }
    assert_eq!(layout_version(&lab, 1), 2);
}

#[test]
fn one_multiplexed_connection_per_host_whatever_the_number_of_commands() {
    // sshd listens on at most 16 addresses.
    let sshd = util::LoopSshd::start(16);
    let run = sshd
        .mesh()
        .args(["exec", "--", "echo $SSH_CONNECTION | cut -d' ' -f3"])
        .run()
        .ok();
    for i in 1..=sshd.count {
        assert!(
            run.stdout.contains(&format!("[l{i}] 127.0.0.{i}\n")),
            "l{i} not reached at its own address:\n{}",
            run.stdout
        );
    }
    assert_eq!(sshd.logins(), sshd.count, "one login per host");
    // A read-only step runs several commands per host (facts, probe, recheck):
    // still one login each. (4 hosts: the recheck simulates an apt upgrade.)
    let dry = sshd
        .mesh()
        .args([
            "--limit",
            "l[1-4]",
            "--dry-run",
            "--json",
            "nodes",
            "--only",
            "basic",
        ])
        .run()
        .ok();
    let events = dry.events();
    let steps = events.iter().filter(|e| e["event"] == "step_done").count();
    assert_eq!(steps, 4, "{}", dry.stdout);
    let log = std::fs::read_to_string(sshd.dir.path().join(".mesh/logs/latest/l1.log")).unwrap();
    let commands = log.lines().filter(|l| l.contains("(exit ")).count();
    assert!(commands >= 3, "facts, probe, recheck:\n{log}");
    assert_eq!(
        sshd.logins(),
        sshd.count + 4,
        "one more login per host for the second run"
    );
}

/// The services inventory's head: the lab's base image and the example's
/// vars. The greeting carries the lab and this run's id, so the web image is
/// new to the controller's Docker and must be built (a rerun of the test, or
/// another test running beside it, builds its own).
fn services_vars(lab: &Lab, domain: &str) -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| format!("{}-{}", std::process::id(), util::now_nanos()));
    format!(
        "vars: {{ BASE_IMAGE: \"{}\", WEB_DOMAIN: {domain}, GREETING: \"the lab {run} {}\" }}\ningress: {{ crowdsec: true }}",
        util::base_image(),
        lab.name
    )
}

#[test]
fn services_build_once_ship_route_through_the_bastion_and_clean_up() {
    let lab = Lab::start("svc", 3, 28);
    lab.install_docker();
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory("services.yml", &services_vars(&lab, "web.example.test"));
    let mesh = || Mesh::new(&inv);

    // First run: two distinct contexts (traefik, web) built once each, shipped.
    let ps = util::PsSampler::start(lab.host(1));
    let first = mesh()
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .ok();
    let argv_seen = ps.finish();
    let images = first
        .events()
        .into_iter()
        .find(|e| e["event"] == "images")
        .expect("an images event");
    // web runs on two hosts with one rendered context: one build; traefik's
    // context may already be in this machine's Docker from an earlier run.
    let built: Vec<&str> = images["built"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let known = images["up_to_date"].as_array().unwrap().len();
    assert_eq!(
        built.iter().filter(|t| t.starts_with("mesh/web:")).count(),
        1,
        "{images}"
    );
    assert_eq!(built.len() + known, 2, "{images}");
    for h in first.summary()["hosts"].as_array().unwrap() {
        assert!(h["changed"].as_u64().unwrap() > 0, "{h}");
    }
    let web_tag = images["built"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .find(|t| t.starts_with("mesh/web:"))
        .unwrap();
    for i in 2..=3 {
        let have = lab.on(
            i,
            &format!("docker image inspect --format '{{{{.Id}}}}' {web_tag}"),
        );
        assert_eq!(have.code, 0, "host {i} lacks {web_tag}");
        // web has a port pair: its own compose file, one project per slot.
        let compose = lab
            .on(i, "cat /containers/build/web/.mesh-compose.yml")
            .stdout;
        assert!(
            compose.contains(&format!("${{MESH_IMAGE:-{web_tag}}}")),
            "{compose}"
        );
        // The image was built on the controller: web's context stays there
        // (its compose file mounts nothing of it).
        assert_eq!(shipped_context(&lab, i, "web"), "", "host {i}");
        assert_eq!(
            lab.on(i, "stat -c %a /etc/logrotate.d/mesh-containers")
                .stdout
                .trim(),
            "644"
        );
    }
    // The bastion: Redis on the overlay address only, password files private.
    let listen = lab.on(1, "ss -ltnH 'sport = :6379'").stdout;
    assert!(listen.contains(&format!("{}:6379", lab.ip(1))), "{listen}");
    assert!(
        !listen.contains("0.0.0.0:6379") && !listen.contains("127.0.0.1:6379"),
        "{listen}"
    );
    for (file, mode) in [
        ("/containers/data/traefik/acme.json", "600"),
        ("/etc/redis/mesh-auth", "600"),
        ("/etc/redis/redis.conf", "640"),
        ("/containers/build/traefik/traefik.yml", "600"),
    ] {
        assert_eq!(
            lab.on(1, &format!("stat -c %a {file}")).stdout.trim(),
            mode,
            "{file}"
        );
    }
    // The bastion gets the traefik.yml its compose file mounts, not the
    // rest of the context (the Traefik binary, the Dockerfile).
    assert_eq!(shipped_context(&lab, 1, "traefik"), "traefik.yml");
    eprintln!(
        "shipped context bytes: traefik {} of {}, web {} of {}",
        context_bytes_on(&lab, 1, "traefik"),
        context_bytes(&df.path().join("traefik")),
        context_bytes_on(&lab, 2, "web"),
        context_bytes(&df.path().join("web")),
    );
    let crowdsec = lab
        .on(1, "systemctl is-active crowdsec crowdsec-firewall-bouncer")
        .stdout;
    assert_eq!(crowdsec.trim(), "active\nactive", "{crowdsec}");

    // Second run: nothing built, nothing shipped, nothing changed.
    let again = mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    assert!(
        again.stdout.contains("images: 0 built, 2 up to date"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("3 hosts: 0 changed, 0 failed"),
        "{}",
        again.stdout
    );

    // Up: a request to the bastion reaches both workers.
    let up = mesh().args(["services-up"]).run().ok();
    assert!(up.stdout.contains("running (healthy)"), "{}", up.stdout);
    let bastion = lab.ip(1);
    let mut seen = std::collections::BTreeSet::new();
    util::eventually(|| {
        let (status, body) = util::http_get(&bastion, "web.example.test")?;
        if status != 200 {
            return Err(format!("status {status}: {body}"));
        }
        assert!(body.contains("hello from the lab"), "{body}");
        for i in 2..=3 {
            if body.contains(&format!("served by {}", lab.host(i))) {
                seen.insert(i);
            }
        }
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("backends seen so far: {seen:?}"))
        }
    });

    // Context files an earlier mesh shipped are removed; mesh's own stay.
    assert_eq!(
        lab.on(1, "cp /containers/build/traefik/traefik.yml /containers/build/traefik/Dockerfile && mkdir -p /containers/build/traefik/old && echo x > /containers/build/traefik/old/app.py").code,
        0
    );
    assert_eq!(lab.on(2, "echo x > /containers/build/web/app.py").code, 0);

    // Redis restarts, then a route changes: Traefik follows.
    lab.on(1, "systemctl restart redis-server");
    let inv2 = lab.services_inventory("services.yml", &services_vars(&lab, "shop.example.test"));
    assert_eq!(inv2, inv);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    util::eventually(|| match util::http_get(&bastion, "shop.example.test")? {
        (200, body) if body.contains("served by") => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(util::http_get(&bastion, "web.example.test").unwrap().0, 404);
    assert_eq!(shipped_context(&lab, 1, "traefik"), "traefik.yml");
    assert_eq!(lab.on(1, "test -e /containers/build/traefik/old").code, 1);
    assert_eq!(shipped_context(&lab, 2, "web"), "");
    assert_eq!(
        lab.on(2, "cd /containers/build/web && ls -A | sort").stdout,
        ".mesh-compose.yml\n.mesh-ports\n"
    );

    // A missing variable stops everything before a build or a host is touched.
    let before: Vec<String> = (1..=3)
        .map(|i| {
            lab.on(
                i,
                "ls -lR --time-style=full-iso /containers/build; docker images -q | sort",
            )
            .stdout
        })
        .collect();
    let dockerfile = df.path().join("web/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    std::fs::write(
        &dockerfile,
        format!("{text}LABEL x=\"<< NOT_DEFINED_ANYWHERE >>\"\n"),
    )
    .unwrap();
    let bad = mesh()
        .args(["services", "--dockerfiles", &dir])
        .run()
        .expect_code(2);
    let line = text.lines().count() + 1;
    assert!(
        bad.stderr.contains(&format!("web/Dockerfile:{line}:"))
            && bad.stderr.contains("NOT_DEFINED_ANYWHERE"),
        "{}",
        bad.stderr
    );
    for i in 1..=3 {
        let now = lab
            .on(
                i,
                "ls -lR --time-style=full-iso /containers/build; docker images -q | sort",
            )
            .stdout;
        assert_eq!(now, before[i - 1], "host {i} changed");
    }
    std::fs::write(&dockerfile, text).unwrap();

    // The seed's publisher: traefik-kop on the workers (a test fixture that
    // records its arguments), its Redis password in a 0600 environment file.
    let assets = tempfile::tempdir().unwrap();
    let arch_dir = assets.path().join(std::env::consts::ARCH);
    std::fs::create_dir_all(&arch_dir).unwrap();
    std::fs::copy(
        util::repo_root().join("tests/fixtures/traefik-kop-fixture"),
        arch_dir.join("traefik-kop"),
    )
    .unwrap();
    let kop = lab.services_inventory(
        "kop.yml",
        &services_vars(&lab, "shop.example.test")
            .replace("crowdsec: true", "crowdsec: false, publisher: traefik-kop"),
    );
    Mesh::new(&kop)
        .args([
            "--assets",
            assets.path().to_str().unwrap(),
            "--limit",
            &lab.host(2),
        ])
        .args(["services", "--dockerfiles", &dir])
        .run()
        .ok();
    let recorded = util::eventually(|| {
        let r = lab.on(2, "cat /run/traefik-kop-fixture");
        if r.code == 0 {
            Ok(r.stdout)
        } else {
            Err(r.stderr)
        }
    });
    let want = format!(
        "args --hostname {} --bind-ip {} --redis-addr {}:6379",
        lab.host(2),
        lab.ip(2),
        lab.ip(1)
    );
    assert!(recorded.contains(&want), "{recorded}");
    assert!(recorded.contains("redis_pass set"), "{recorded}");
    assert_eq!(
        lab.on(2, "stat -c %a /etc/default/traefik-kop")
            .stdout
            .trim(),
        "600"
    );
    assert_eq!(
        lab.on(2, "systemctl is-active traefik-kop").stdout.trim(),
        "active"
    );
    assert_eq!(
        lab.on(3, "test -e /usr/local/bin/traefik-kop").code,
        1,
        "--limit kept host 3 out"
    );

    // A service removed from the folder stays until --prune, which
    // removes it from its hosts and Redis.
    std::fs::remove_dir_all(df.path().join("web")).unwrap();
    std::fs::write(df.path().join("web.yml"), "services: {}\n").unwrap();
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    assert_eq!(
        lab.on(2, "test -d /containers/build/web").code,
        0,
        "removed without --prune"
    );
    mesh()
        .args(["services", "--prune", "--dockerfiles", &dir])
        .run()
        .ok();
    for i in 2..=3 {
        assert_ne!(lab.on(i, "test -e /containers/build/web").code, 0);
        let ctrs = lab
            .on(
                i,
                "docker ps -aq --filter label=com.docker.compose.service=web",
            )
            .stdout;
        assert_eq!(ctrs.trim(), "", "host {i} still runs web");
    }
    let keys = lab.redis("--scan --pattern 'traefik/*'");
    assert!(!keys.contains("web"), "stale routes: {keys}");

    // No secret in any argv on the bastion, log or JSON line.
    let redis_pwd = util::secret(&inv, "REDIS_PWD");
    assert!(redis_pwd.len() >= 32);
    assert!(
        !argv_seen.contains(&redis_pwd),
        "REDIS_PWD in a process list"
    );
    assert!(
        !first.stdout.contains(&redis_pwd),
        "REDIS_PWD in --json output"
    );
    let logs = lab.dir.join(".mesh/logs");
    let out = std::process::Command::new("grep")
        .args(["-rl", &redis_pwd])
        .arg(&logs)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "REDIS_PWD in {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Requests to the bastion for `host` in a loop until stopped: (ok, failed, last body).
struct RequestLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>, String)>,
}

impl RequestLoop {
    fn start(addr: String, host: &str) -> RequestLoop {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let host = host.to_string();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed, mut last) = (0, Vec::new(), String::new());
            // Bounded: at most 10 minutes, whatever happens.
            let end = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while !flag.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < end
            {
                match util::http_get(&addr, &host) {
                    Ok((200, body)) => {
                        ok += 1;
                        last = body;
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, last)
        });
        RequestLoop { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>, String) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The files of `service`'s folder on host `i` that came from its context
/// (mesh's own `.mesh-*` files left out), sorted, one per line.
fn shipped_context(lab: &Lab, i: usize, service: &str) -> String {
    lab.on(
        i,
        &format!("cd /containers/build/{service} && find . -type f ! -name '.mesh-*' | sed 's|^\\./||' | sort"),
    )
    .stdout
    .trim()
    .to_string()
}

/// Bytes of those files.
fn context_bytes_on(lab: &Lab, i: usize, service: &str) -> u64 {
    lab.on(
        i,
        &format!("find /containers/build/{service} -type f ! -name '.mesh-*' -printf '%s\\n' | awk '{{ n += $1 }} END {{ print n + 0 }}'"),
    )
    .stdout
    .trim()
    .parse()
    .unwrap()
}

/// Bytes of a service folder's build context on the controller (mesh.yml
/// and hooks/ are not part of it).
fn context_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -type f ! -path ./mesh.yml ! -path './hooks/*' -printf '%s\\n' | awk '{ n += $1 } END { print n + 0 }'")
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn deploy_switches_without_a_failed_request_and_rolls_back_a_bad_build() {
    // Debian 12: Docker 20.10 and compose v1 (`docker-compose`) stay covered.
    let lab = Lab::start_suite("dep", 3, 29, util::DEBIAN_12);
    lab.install_docker();
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory(
        "services.yml",
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let bastion = lab.ip(1);
    util::eventually(|| match util::http_get(&bastion, "web.example.test")? {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });

    // A changed file, deployed under a request loop: no request fails and
    // the new content is served at the end.
    let index = df.path().join("web/index.html");
    std::fs::write(&index, "the second build\n").unwrap();
    let requests = RequestLoop::start(bastion.clone(), "web.example.test");
    let t0 = std::time::Instant::now();
    let run = mesh()
        .args(["deploy", "--service", "web", "--dockerfiles", &dir])
        .run()
        .ok();
    let deploy_seconds = t0.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (ok, failed, last) = requests.finish();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        run.stdout
    );
    assert!(ok > 20, "only {ok} requests");
    assert!(last.contains("the second build"), "{last}");
    for stage in ["starting", "healthy", "routing", "stopping_old", "running"] {
        assert!(
            run.stdout.contains(stage),
            "no stage {stage}:\n{}",
            run.stdout
        );
    }
    eprintln!("deploy of web on 2 hosts: {deploy_seconds:.1} s, {ok} requests, 0 failed");
    // Recorded on the hosts: the live slot, and an audit line.
    for i in 2..=3 {
        assert_eq!(live_slot(&lab, i, "web"), "b");
        let audit = lab.on(i, "tail -n 1 /var/log/mesh/deploy.log").stdout;
        assert!(audit.contains("\"result\":\"running\""), "{audit}");
    }
    // The same build again: nothing to do.
    let again = mesh()
        .args(["deploy", "--service", "web", "--dockerfiles", &dir])
        .run()
        .ok();
    assert!(again.stdout.contains("web: unchanged"), "{}", again.stdout);

    // --rollback: every host back on its previous image (the first build),
    // then forward again to the second.
    mesh()
        .args([
            "deploy",
            "--service",
            "web",
            "--rollback",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .ok();
    for i in 2..=3 {
        assert_eq!(live_slot(&lab, i, "web"), "a");
    }
    for _ in 0..4 {
        let body = util::http_get(&bastion, "web.example.test").unwrap().1;
        assert!(!body.contains("the second build"), "rolled back: {body}");
    }
    mesh()
        .args(["deploy", "--service", "web", "--dockerfiles", &dir])
        .run()
        .ok();
    for _ in 0..4 {
        let body = util::http_get(&bastion, "web.example.test").unwrap().1;
        assert!(body.contains("the second build"), "forward again: {body}");
    }

    // A build that never gets healthy on host 3, one host at a time: host 3
    // keeps its old copy, host 2 (already switched) goes back, exit 1; no
    // request fails meanwhile.
    let app = df.path().join("web/app.py");
    let good = std::fs::read_to_string(&app).unwrap();
    std::fs::write(
        &app,
        format!("import socket, sys\nif socket.gethostname() == \"{}\":\n    sys.exit(\"refusing to start here\")\n{good}", lab.host(3)),
    )
    .unwrap();
    std::fs::write(&index, "the third build\n").unwrap();
    let requests = RequestLoop::start(bastion.clone(), "web.example.test");
    let bad = mesh()
        .args([
            "deploy",
            "--service",
            "web",
            "--batch",
            "1",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .expect_code(1);
    let (_, failed, last) = requests.finish();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        bad.stdout.contains("refusing to start here"),
        "{}",
        bad.stdout
    );
    assert!(last.contains("the second build"), "{last}");
    for i in 2..=3 {
        let body = util::http_get(&bastion, "web.example.test").unwrap().1;
        assert!(body.contains("the second build"), "host {i}: {body}");
    }
    let host2 = lab.on(2, "tail -n 2 /var/log/mesh/deploy.log").stdout;
    assert!(host2.contains("\"result\":\"running\""), "{host2}");
    std::fs::write(&app, good).unwrap();

    // Two deploys of one service at once, from two controllers (a teammate's
    // checkout: the same inventory and secrets in a folder of its own): the
    // second fails naming the holder of the lock on the host.
    let teammate = inv.parent().unwrap().join("teammate");
    std::fs::create_dir_all(&teammate).unwrap();
    for file in [inv.file_name().unwrap(), "secrets.env".as_ref()] {
        std::fs::copy(inv.parent().unwrap().join(file), teammate.join(file)).unwrap();
    }
    let mut first = mesh()
        .args([
            "deploy",
            "--service",
            "web",
            "--force",
            "--drain",
            "10",
            "--dockerfiles",
            &dir,
        ])
        .spawn();
    util::eventually(
        || match lab.on(2, "cat /var/lib/mesh/deploy/web.lock/holder").code {
            0 => Ok(()),
            _ => Err("no lock yet".to_string()),
        },
    );
    // On the same controller the run lock beside the inventory says so first.
    let same = mesh()
        .args(["deploy", "--service", "web", "--dockerfiles", &dir])
        .run()
        .expect_code(2);
    assert!(
        same.stderr.contains(&format!(
            "another mesh run on this inventory holds {}: pid {}",
            inv.parent().unwrap().join(".mesh/run.lock").display(),
            first.id()
        )),
        "{}",
        same.stderr
    );
    let second = Mesh::new(&teammate.join(inv.file_name().unwrap()))
        .args([
            "deploy",
            "--service",
            "web",
            "--force",
            "--limit",
            &lab.host(2),
            "--dockerfiles",
            &dir,
        ])
        .run()
        .expect_code(1);
    assert!(
        second.stdout.contains(&format!(
            "holds the lock on {}: pid {}",
            lab.host(2),
            first.id()
        )),
        "{}",
        second.stdout
    );
    assert!(first.wait().unwrap().success());
}

/// The live slot host `i` records for `service`.
fn live_slot(lab: &Lab, i: usize, service: &str) -> String {
    lab.on(
        i,
        &format!("sed -n 's/^slot //p' /var/lib/mesh/deploy/{service}.state"),
    )
    .stdout
    .trim()
    .to_string()
}

/// A Debian package `mesh-care-probe` of `version`, built here with dpkg-deb.
fn probe_deb(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let root = dir.join(format!("probe-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: mesh-care-probe\nVersion: {version}\nArchitecture: all\nMaintainer: mesh tests <tests@example.org>\nDescription: a package care must upgrade\n"),
    )
    .unwrap();
    let deb = dir.join(format!("mesh-care-probe_{version}_all.deb"));
    let out = std::process::Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

/// Version 1.0 of `mesh-care-probe` installed on hosts `hosts`, 2.0
/// offered by a local apt repository there (the upgrade care must make).
fn offer_probe_upgrade(lab: &Lab, hosts: &[usize]) {
    let work = tempfile::tempdir().unwrap();
    let v1 = probe_deb(work.path(), "1.0");
    let repo = work.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::copy(
        probe_deb(work.path(), "2.0"),
        repo.join("mesh-care-probe_2.0_all.deb"),
    )
    .unwrap();
    let scan = std::process::Command::new("dpkg-scanpackages")
        .args([".", "/dev/null"])
        .current_dir(&repo)
        .output()
        .unwrap();
    std::fs::write(repo.join("Packages"), scan.stdout).unwrap();
    for &i in hosts {
        lab.docker(&[
            "cp",
            v1.to_str().unwrap(),
            // Not /tmp: Debian 13 mounts a tmpfs there, over what docker cp writes.
            &format!("{}:/root/probe.deb", lab.host(i)),
        ]);
        lab.docker(&[
            "cp",
            repo.to_str().unwrap(),
            &format!("{}:/opt/care-repo", lab.host(i)),
        ]);
        let r = lab.on(
            i,
            "dpkg -i /root/probe.deb >/dev/null && echo 'deb [trusted=yes] file:/opt/care-repo ./' > /etc/apt/sources.list.d/care.list",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
}

/// A lab host whose PID 1 exits stops; this starts it again once it went
/// down, as a machine powering back on. True if it went down within 90 s.
fn power_back_on(host: String) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while std::time::Instant::now() < end {
            let state = std::process::Command::new("docker")
                .args(["inspect", "-f", "{{.State.Running}}", &host])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&state.stdout).trim() == "false" {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let _ = std::process::Command::new("docker")
                    .args(["start", &host])
                    .output();
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        false
    })
}

#[test]
fn care_upgrades_matching_hosts_in_batches_runs_hooks_and_waits_out_a_reboot() {
    let lab = Lab::start("care", 3, 30);
    offer_probe_upgrade(&lab, &[1, 2, 3]);
    lab.on(1, "touch /var/run/reboot-required");
    // Hosts 1 and 2 are web hosts; 3 is a db host.
    let inv = lab.write_inventory("care.yml", |text| {
        text.replace("  lab:\n", "  web:\n").replace(
            &format!("      {}:", lab.host(3)),
            &format!("  db:\n    hosts:\n      {}:", lab.host(3)),
        )
    });
    let df = tempfile::tempdir().unwrap();
    std::fs::create_dir(df.path().join("care")).unwrap();
    std::fs::write(
        df.path().join("care/10-backup.sh"),
        "echo \"backup of $HOSTNAME in zone $ZONE\" > /root/care-hook-ran\n",
    )
    .unwrap();
    let dir = df.path().to_str().unwrap();
    let run = Mesh::new(&inv)
        .args(["care", "--group", "web*", "--dockerfiles", dir])
        .run()
        .ok();
    for i in 1..=2 {
        let v = lab
            .on(i, "dpkg-query -W -f '${Version}' mesh-care-probe")
            .stdout;
        assert_eq!(v, "2.0", "host {i}");
        let hook = lab.on(i, "cat /root/care-hook-ran").stdout;
        assert_eq!(
            hook.trim(),
            format!("backup of {} in zone z{i}", lab.host(i))
        );
        assert!(
            run.stdout.contains(&format!(
                "[{}] package mesh-care-probe: 1.0 → 2.0",
                lab.host(i)
            )),
            "{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .contains(&format!("[{}] reboot required", lab.host(1))),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout
            .contains(&format!("[{}] reboot required", lab.host(2))),
        "{}",
        run.stdout
    );
    // The db host was not touched.
    assert_eq!(
        lab.on(3, "dpkg-query -W -f '${Version}' mesh-care-probe")
            .stdout,
        "1.0"
    );
    assert_ne!(lab.on(3, "test -e /root/care-hook-ran").code, 0);
    assert!(
        !run.stdout.contains(&format!("[{}]", lab.host(3))),
        "{}",
        run.stdout
    );
    // One host of the group at a time: host 1's last command came before
    // host 2's first (the host logs stamp every command).
    let stamps = |i: usize| -> Vec<f64> {
        let path = lab
            .dir
            .join(format!(".mesh/logs/latest/{}.log", lab.host(i)));
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("--- ")?.split(' ').next()?.parse().ok())
            .collect()
    };
    let (one, two) = (stamps(1), stamps(2));
    assert!(
        one.last().unwrap() <= two.first().unwrap(),
        "batches overlapped: {one:?} {two:?}"
    );

    // --reboot: the host goes down (a lab host whose PID 1 exits stops; this
    // test starts it again, as a machine powering back on) and mesh waits
    // for the new boot before it reports.
    let watcher = power_back_on(lab.host(1));
    let rebooted = Mesh::new(&inv)
        .args([
            "care",
            "--group",
            &lab.host(1),
            "--reboot",
            "--reboot-wait",
            "90",
            "--dockerfiles",
            dir,
        ])
        .run()
        .ok();
    assert!(watcher.join().unwrap(), "the host never went down");
    assert!(
        rebooted.stdout.contains("rebooted: back"),
        "{}",
        rebooted.stdout
    );
    assert_eq!(
        lab.on(1, "test -e /var/run/reboot-required").code,
        1,
        "/run is new after a boot"
    );
}

/// Which of hosts `of` answered `domain` through `addr` within a while.
fn wait_for_backends(lab: &Lab, addr: &str, domain: &str, of: &[usize]) {
    let mut seen = std::collections::BTreeSet::new();
    util::eventually(|| {
        let (status, body) = util::http_get(addr, domain)?;
        if status != 200 {
            return Err(format!("{addr} {domain}: {status} {body}"));
        }
        for &i in of {
            if body.contains(&format!("served by {}", lab.host(i))) {
                seen.insert(i);
            }
        }
        (seen.len() == of.len())
            .then_some(())
            .ok_or(format!("{addr} {domain}: backends so far {seen:?}"))
    });
}

#[test]
fn care_drains_a_worker_through_its_reboot_without_a_failed_request_and_spares_a_sole_replica() {
    let lab = Lab::start("carefleet", 3, 37);
    lab.install_docker();
    // Host 1 is the only bastion (the only traefik); hosts 2 and 3 run web.
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory(
        "carefleet.yml",
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let bastion = lab.ip(1);
    wait_for_backends(&lab, &bastion, "web.example.test", &[2, 3]);
    offer_probe_upgrade(&lab, &[2]);
    for i in [1, 2] {
        assert_eq!(lab.on(i, "touch /var/run/reboot-required").code, 0);
    }
    let keys = || lab.redis("--scan --pattern 'traefik/*' | sort");
    let keys_before = keys();
    let boot = |i: usize| {
        lab.on(i, "cat /proc/sys/kernel/random/boot_id; ps -o lstart= -p 1")
            .stdout
    };

    // A dry run lists the packages and what would happen; nothing changes.
    let dry = mesh()
        .args([
            "--dry-run",
            "care",
            "--group",
            &lab.host(2),
            "--reboot",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .ok();
    let h2 = lab.host(2);
    for line in [
        format!("[{h2}]   would change package mesh-care-probe: 1.0 → 2.0"),
        format!(
            "[{h2}] would withdraw the routes of web from {} first",
            lab.host(1)
        ),
        format!("[{h2}] would reboot"),
    ] {
        assert!(dry.stdout.contains(&line), "{line}\n{}", dry.stdout);
    }
    assert_eq!(
        lab.on(2, "dpkg-query -W -f '${Version}' mesh-care-probe")
            .stdout,
        "1.0"
    );
    assert_eq!(keys(), keys_before);
    // The host's own package lists were not refreshed by the dry run.
    assert_ne!(
        lab.on(2, "ls /var/lib/apt/lists/ | grep -q care-repo").code,
        0
    );

    // The bastion holds the only traefik: refused before anything changes.
    let boot1 = boot(1);
    let sole = mesh()
        .args([
            "care",
            "--group",
            &lab.host(1),
            "--reboot",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .expect_code(1);
    assert!(
        sole.stdout.contains(&format!(
            "{} holds the only replica of traefik",
            lab.host(1)
        )) && sole.stdout.contains("--allow-downtime"),
        "{}",
        sole.stdout
    );
    assert_eq!(boot(1), boot1, "the bastion rebooted");
    assert_eq!(lab.on(1, "test -e /var/run/reboot-required").code, 0);
    assert_eq!(keys(), keys_before);

    // A worker of the two: withdrawn, upgraded, rebooted, its containers
    // up, its route back — under a request loop that never fails.
    let web2 = containers(&lab, 2, "web");
    assert!(!web2.is_empty());
    let requests = RequestLoop::start(bastion.clone(), "web.example.test");
    let watcher = power_back_on(lab.host(2));
    let run = mesh()
        .args([
            "care",
            "--group",
            &lab.host(2),
            "--reboot",
            "--reboot-wait",
            "120",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .ok();
    std::thread::sleep(std::time::Duration::from_secs(1));
    no_failures(
        vec![("web via the bastion".into(), requests)],
        "care --reboot",
    );
    assert!(watcher.join().unwrap(), "the worker never went down");
    for line in [
        format!("[{h2}] withdrawn: web from {}", lab.host(1)),
        format!("[{h2}] package mesh-care-probe: 1.0 → 2.0"),
        format!("[{h2}] rebooted: back"),
        format!("[{h2}] routes: web back on {}", lab.host(1)),
    ] {
        assert!(run.stdout.contains(&line), "{line}\n{}", run.stdout);
    }
    assert_eq!(
        lab.on(2, "test -e /var/run/reboot-required").code,
        1,
        "/run is new after a boot"
    );
    let running = lab.on(
        2,
        "docker ps --filter label=com.docker.compose.service=web --format '{{.State}}'",
    );
    assert_eq!(running.stdout.trim(), "running", "{}", running.stderr);
    wait_for_backends(&lab, &bastion, "web.example.test", &[2, 3]);
    assert_eq!(keys(), keys_before, "the routes came back as they were");
}

/// The app of the fleet tests' extra services (python3, like the example's
/// web): on PORT it serves its page, the first-start stamp of its data dir
/// (`DATA`) and its host's name; without PORT it only keeps running.
const FLEET_APP: &str = r#"import http.server, os, signal, socket, sys, time, urllib.request
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
BIND = os.environ.get("BIND", "0.0.0.0")
PORT = int(os.environ.get("PORT", "0") or "0")
DATA = os.environ.get("DATA", "")
if "--check" in sys.argv:
    urllib.request.urlopen(f"http://{BIND}:{PORT}/up", timeout=2)
    sys.exit(0)
stamp = ""
if DATA:
    path = os.path.join(DATA, "stamp")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"{time.time_ns()}\n")
    stamp = open(path).read().strip()
page = open("/app/index.html").read().strip()
if not PORT:
    while True:
        time.sleep(3600)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/up":
            body = b"ok\n"
        else:
            body = f"{page} stamp={stamp} served by {socket.gethostname()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((BIND, PORT), Handler).serve_forever()
"#;

/// The Dockerfile of those services: the example web's first lines, so the
/// python3 layer is built once and shared.
const FLEET_DOCKERFILE: &str = "FROM << BASE_IMAGE >>
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/*
COPY app.py index.html /app/
CMD [\"python3\", \"/app/app.py\"]
";

/// The example dockerfiles folder plus `services` (name, mesh.yml, page),
/// with `compose` as the web group's file.
fn fleet_dockerfiles(services: &[(&str, &str, &str)], compose: &str) -> tempfile::TempDir {
    let df = util::example_dockerfiles();
    for (name, mesh_yml, page) in services {
        let dir = df.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), FLEET_DOCKERFILE).unwrap();
        std::fs::write(dir.join("app.py"), FLEET_APP).unwrap();
        std::fs::write(dir.join("index.html"), format!("{page}\n")).unwrap();
        std::fs::write(dir.join("mesh.yml"), mesh_yml).unwrap();
    }
    std::fs::write(df.path().join("web.yml"), compose).unwrap();
    df
}

/// An inventory of `bastions` bastions (hosts 1..) and the other hosts in
/// group `web` (no traefik_host: their routes go to every bastion).
fn fleet_inventory(lab: &Lab, bastions: usize, head: &str) -> std::path::PathBuf {
    let ssh: String = std::fs::read_to_string(lab.inventory())
        .unwrap()
        .lines()
        .take_while(|l| !l.starts_with("groups:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut text = format!("{head}\n{ssh}groups:\n  bastion:\n    hosts:\n");
    for i in 1..=lab.count {
        if i == bastions + 1 {
            text.push_str("  web:\n    hosts:\n");
        }
        let services = if i <= bastions {
            ", services: [traefik, redis]"
        } else {
            ""
        };
        text.push_str(&format!(
            "      {}: {{ address: {ip}, overlay_ip: {ip}{services} }}\n",
            lab.host(i),
            ip = lab.ip(i)
        ));
    }
    let path = lab.dir.join("fleet.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The container ids host `i` runs for compose service `service`.
fn containers(lab: &Lab, i: usize, service: &str) -> String {
    lab.on(
        i,
        &format!("docker ps -q --filter label=com.docker.compose.service={service} | sort"),
    )
    .stdout
    .trim()
    .to_string()
}

/// Every request loop's failures, asserted empty; the last bodies.
fn no_failures(loops: Vec<(String, RequestLoop)>, during: &str) -> Vec<String> {
    let mut last = Vec::new();
    for (what, l) in loops {
        let (ok, failed, body) = l.finish();
        assert!(
            failed.is_empty(),
            "{what} during {during}: {} of {} requests failed: {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 5, "{what}: only {ok} requests");
        eprintln!("{during}: {what}: {ok} requests answered, 0 failed");
        last.push(body);
    }
    last
}

#[test]
fn two_bastions_several_services_per_host_each_deployed_without_a_failed_request() {
    let lab = Lab::start("fleet", 4, 31);
    lab.install_docker();
    let compose = "services:
  web:
    network_mode: host
    restart: unless-stopped
    environment: { BIND: \"<< OVERLAY_IP >>\", PORT: \"<< PORT_WEB >>\" }
    labels:
      traefik.http.routers.web.rule: \"Host(`web.example.test`)\"
      traefik.http.routers.web.entrypoints: web
  api:
    network_mode: host
    restart: unless-stopped
    environment: { BIND: \"<< OVERLAY_IP >>\", PORT: \"<< PORT_API >>\" }
    labels:
      traefik.http.routers.api.rule: \"Host(`api.example.test`)\"
      traefik.http.routers.api.entrypoints: web
      traefik.http.services.api.loadbalancer.server.port: \"<< PORT_API >>\"
  worker:
    network_mode: host
    restart: unless-stopped
";
    let df = fleet_dockerfiles(
        &[
            (
                "api",
                "ports: [8100, 8101]\nhealth: { path: /up }\n",
                "api one",
            ),
            ("worker", "# no ports: recreated on deploy\n", "worker"),
        ],
        compose,
    );
    let dir = df.path().to_str().unwrap().to_string();
    let inv = fleet_inventory(
        &lab,
        2,
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);

    // A wrong (empty) folder: input error, nothing touched.
    let empty = tempfile::tempdir().unwrap();
    let bad = mesh()
        .args(["services", "--dockerfiles", empty.path().to_str().unwrap()])
        .run()
        .expect_code(2);
    assert!(bad.stderr.contains("no service folder"), "{}", bad.stderr);
    assert_ne!(lab.on(3, "test -d /containers/build").code, 0);

    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    // Nothing is routed before services-up started it.
    assert_eq!(
        lab.redis("--scan --pattern 'traefik/*services*'").trim(),
        ""
    );
    mesh().args(["services-up"]).run().ok();
    let (b1, b2) = (lab.ip(1), lab.ip(2));
    for addr in [&b1, &b2] {
        for domain in ["web.example.test", "api.example.test"] {
            let mut seen = std::collections::BTreeSet::new();
            util::eventually(|| {
                let (status, body) = util::http_get(addr, domain)?;
                if status != 200 {
                    return Err(format!("{addr} {domain}: {status} {body}"));
                }
                for i in 3..=4 {
                    if body.contains(&format!("served by {}", lab.host(i))) {
                        seen.insert(i);
                    }
                }
                (seen.len() == 2)
                    .then_some(())
                    .ok_or(format!("{addr} {domain}: backends so far {seen:?}"))
            });
        }
    }

    // Deploy each routed service in turn under request loops through both
    // bastions for both domains: no request fails, the other services keep
    // their containers.
    let mut ids: Vec<(usize, &str, String)> = Vec::new();
    for i in 3..=4 {
        for svc in ["api", "worker", "web"] {
            ids.push((i, svc, containers(&lab, i, svc)));
        }
    }
    let loops = || {
        let mut v = Vec::new();
        for addr in [&b1, &b2] {
            for domain in ["web.example.test", "api.example.test"] {
                v.push((
                    format!("{domain} via {addr}"),
                    RequestLoop::start(addr.clone(), domain),
                ));
            }
        }
        v
    };
    std::fs::write(df.path().join("web/index.html"), "web two\n").unwrap();
    let running = loops();
    let run = mesh()
        .args(["deploy", "--service", "web", "--dockerfiles", &dir])
        .run()
        .ok();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let last = no_failures(running, "deploy web");
    assert!(
        last[0].contains("web two") && last[2].contains("web two"),
        "{last:?}\n{}",
        run.stdout
    );
    for (i, svc, id) in &ids {
        if *svc != "web" {
            assert_eq!(
                &containers(&lab, *i, svc),
                id,
                "{svc} on host {i} was touched"
            );
        }
    }
    std::fs::write(df.path().join("api/index.html"), "api two\n").unwrap();
    let running = loops();
    mesh()
        .args(["deploy", "--service", "api", "--dockerfiles", &dir])
        .run()
        .ok();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let last = no_failures(running, "deploy api");
    assert!(
        last[1].contains("api two") && last[3].contains("api two"),
        "{last:?}"
    );
    for addr in [&b1, &b2] {
        let body = util::http_get(addr, "web.example.test").unwrap().1;
        assert!(
            body.contains("web two"),
            "the api deploy reverted web: {body}"
        );
    }
    for i in 3..=4 {
        assert_eq!(
            containers(&lab, i, "worker"),
            ids.iter().find(|x| x.0 == i && x.1 == "worker").unwrap().2
        );
        assert_eq!(live_slot(&lab, i, "web"), "b");
        assert_eq!(live_slot(&lab, i, "api"), "b");
    }

    // A service without ports deploys by recreate, its downtime printed.
    std::fs::write(df.path().join("worker/index.html"), "worker two\n").unwrap();
    let run = mesh()
        .args(["deploy", "--service", "worker", "--dockerfiles", &dir])
        .run()
        .ok();
    assert!(run.stdout.contains("downtime"), "{}", run.stdout);

    // One bastion down: the other keeps serving both domains, and
    // `services` fails only the stopped bastion.
    lab.docker(&["stop", &lab.host(2)]);
    for domain in ["web.example.test", "api.example.test"] {
        assert_eq!(util::http_get(&b1, domain).unwrap().0, 200, "{domain}");
    }
    let down = mesh()
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .expect_code(1);
    util::assert_only_failed(&down.summary(), &lab.host(2), "");
    for domain in ["web.example.test", "api.example.test"] {
        assert_eq!(util::http_get(&b1, domain).unwrap().0, 200, "{domain}");
    }
}

/// The first-start stamp `kv` serves through the bastion, and its page.
fn kv_page(bastion: &str) -> (String, String) {
    let body = util::eventually(|| match util::http_get(bastion, "kv.example.test")? {
        (200, body) => Ok(body),
        other => Err(format!("{other:?}")),
    });
    let stamp = body
        .split("stamp=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    (stamp, body)
}

#[test]
fn stateful_services_keep_their_volume_across_deploys_rollbacks_and_interrupts() {
    let lab = Lab::start("state", 2, 32);
    lab.install_docker();
    let compose = "services:
  kv:
    network_mode: host
    restart: unless-stopped
    environment: { BIND: \"<< OVERLAY_IP >>\", PORT: \"<< PORT_KV >>\", DATA: /data }
    volumes: [\"kvdata:/data\"]
    labels:
      traefik.http.routers.kv.rule: \"Host(`kv.example.test`)\"
      traefik.http.routers.kv.entrypoints: web
  db:
    network_mode: host
    restart: unless-stopped
    environment: { DATA: /data }
    volumes: [\"dbdata:/data\"]
    stop_grace_period: 3s
volumes:
  kvdata: {}
  dbdata: {}
";
    let df = fleet_dockerfiles(
        &[
            (
                "kv",
                "ports: [8200, 8201]\nhealth: { path: /up }\n",
                "kv build 1",
            ),
            ("db", "strategy: recreate\n", "db build 1"),
        ],
        compose,
    );
    std::fs::remove_dir_all(df.path().join("web")).unwrap();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory(
        "state.yml",
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let bastion = lab.ip(1);
    let (stamp, _) = kv_page(&bastion);
    assert!(!stamp.is_empty());
    let db_stamp = || {
        lab.on(2, "cat /var/lib/docker/volumes/mesh_dbdata/_data/stamp")
            .stdout
    };
    let db0 = db_stamp();
    assert!(!db0.trim().is_empty());

    // Three deploys and a rollback: the stamp (the volume) never changes.
    for n in 2..=4 {
        std::fs::write(df.path().join("kv/index.html"), format!("kv build {n}\n")).unwrap();
        let requests = RequestLoop::start(bastion.clone(), "kv.example.test");
        mesh()
            .args(["deploy", "--service", "kv", "--dockerfiles", &dir])
            .run()
            .ok();
        std::thread::sleep(std::time::Duration::from_secs(1));
        no_failures(vec![(format!("kv deploy {n}"), requests)], "deploy kv");
        let (now, body) = kv_page(&bastion);
        assert_eq!(now, stamp, "deploy {n} lost the volume: {body}");
        assert!(body.contains(&format!("kv build {n}")), "{body}");
    }
    let vols = lab.on(2, "docker volume ls -q | sort").stdout;
    assert!(!vols.contains("mesh-kv-"), "a volume per slot: {vols}");
    mesh()
        .args([
            "deploy",
            "--service",
            "kv",
            "--rollback",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .ok();
    let (now, body) = kv_page(&bastion);
    assert_eq!(now, stamp, "{body}");
    assert!(body.contains("kv build 3"), "rollback: {body}");
    // A second rollback goes further back, not to the build just left.
    mesh()
        .args([
            "deploy",
            "--service",
            "kv",
            "--rollback",
            "--dockerfiles",
            &dir,
        ])
        .run()
        .ok();
    assert!(kv_page(&bastion).1.contains("kv build 2"));
    // services-up leaves the rolled-back live copy as it is.
    let before = containers(&lab, 2, "kv");
    mesh().args(["services-up"]).run().ok();
    assert_eq!(containers(&lab, 2, "kv"), before, "services-up touched kv");
    assert!(
        kv_page(&bastion).1.contains("kv build 2"),
        "services-up rolled forward"
    );

    // strategy: recreate, with a volume: data kept, downtime printed.
    std::fs::write(df.path().join("db/index.html"), "db build 2\n").unwrap();
    let run = mesh()
        .args(["deploy", "--service", "db", "--dockerfiles", &dir])
        .run()
        .ok();
    assert!(run.stdout.contains("downtime"), "{}", run.stdout);
    let downtime = run
        .stdout
        .split("downtime ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    eprintln!("recreate deploy of db: downtime {downtime} s");
    assert_eq!(db_stamp(), db0, "recreate lost db's data");

    // Interrupted during routing (Traefik paused, so the confirmation
    // waits), then during the drain: afterwards a plain re-run deploys,
    // without --break-lock, and one copy serves.
    let log = lab
        .dir
        .join(".mesh/logs/latest")
        .join(format!("{}.log", lab.host(2)));
    let interrupt = |drain: &str, at: &dyn Fn() -> bool| {
        let child = mesh()
            .args([
                "deploy",
                "--service",
                "kv",
                "--drain",
                drain,
                "--dockerfiles",
                &dir,
            ])
            .spawn();
        util::eventually_within(120, || {
            at().then_some(()).ok_or("not there yet".to_string())
        });
        let pid = child.id().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        let mut child = child;
        child.wait().unwrap();
    };
    std::fs::write(df.path().join("kv/index.html"), "kv build 5\n").unwrap();
    let traefik = lab
        .on(
            1,
            "docker ps -q --filter label=com.docker.compose.service=traefik",
        )
        .stdout
        .trim()
        .to_string();
    assert_eq!(lab.on(1, &format!("docker pause {traefik}")).code, 0);
    interrupt("2", &|| {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("deploy stage routing"))
    });
    lab.on(1, &format!("docker unpause {traefik}"));
    mesh()
        .args(["deploy", "--service", "kv", "--dockerfiles", &dir])
        .run()
        .ok();
    let (now, body) = kv_page(&bastion);
    assert_eq!(now, stamp);
    assert!(body.contains("kv build 5"), "{body}");
    assert_eq!(containers(&lab, 2, "kv").lines().count(), 1, "one copy");

    std::fs::write(df.path().join("kv/index.html"), "kv build 6\n").unwrap();
    let slot = live_slot(&lab, 2, "kv");
    interrupt("30", &|| live_slot(&lab, 2, "kv") != slot);
    assert_eq!(
        containers(&lab, 2, "kv").lines().count(),
        2,
        "drain: both copies"
    );
    let again = mesh()
        .args(["deploy", "--service", "kv", "--dockerfiles", &dir])
        .run()
        .ok();
    assert!(again.stdout.contains("stale lock"), "{}", again.stdout);
    assert_eq!(containers(&lab, 2, "kv").lines().count(), 1, "one copy");
    let (now, body) = kv_page(&bastion);
    assert_eq!(now, stamp);
    assert!(body.contains("kv build 6"), "{body}");
}

#[test]
fn ctrl_c_stops_the_remote_commands_but_not_a_package_install() {
    let lab = Lab::start("intr", 2, 47);
    let sleeping = |i: usize| lab.on(i, "pgrep -af 'sleep 4[7]' || true").stdout;
    // Ctrl-C ends what the run started on the hosts too (closing an ssh
    // channel does not): TERM to each command's process group, KILL after
    // the grace. Exit 130 within 2 s plus that grace.
    let mut child = lab.mesh().args(["exec", "--", "sleep", "47"]).spawn();
    util::eventually_within(10, || {
        let n = lab.hosts().len();
        let up = (1..=n).filter(|&i| !sleeping(i).trim().is_empty()).count();
        (up == n)
            .then_some(())
            .ok_or(format!("sleep 47 on {up}/{n} hosts"))
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = child.id().to_string();
    let t0 = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "still running 5 s after SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    eprintln!(
        "exec -- sleep 47: exit {status} {:?} after SIGINT",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    util::eventually_within(5, || {
        let left: Vec<String> = (1..=lab.hosts().len()).map(sleeping).collect();
        left.iter()
            .all(|s| s.trim().is_empty())
            .then_some(())
            .ok_or(format!("sleep 47 left on the hosts: {left:?}"))
    });
    let ssh = std::process::Command::new("pgrep")
        .args(["-af", &format!("mesh-{pid}-[0-9a-f]")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ssh.stdout).trim(), "");

    // A package install is left to finish, and the output says where.
    let host = lab.host(2);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("-i")
        .arg(lab.inventory())
        .args(["--progress", "never", "--limit", &host, "exec", "--"])
        .arg("cp /bin/sleep /tmp/dpkg && /tmp/dpkg 46")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let installing = || lab.on(2, "pgrep -x dpkg || true").stdout;
    util::eventually_within(10, || {
        (!installing().trim().is_empty())
            .then_some(())
            .ok_or("no dpkg yet".to_string())
    });
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("left running to finish: dpkg on {host}")),
        "{stderr}"
    );
    assert!(!installing().trim().is_empty(), "dpkg was stopped");
    lab.on(2, "pkill -x dpkg; rm -f /tmp/dpkg");
}

const PG_DOCKERFILE: &str = "FROM << BASE_IMAGE >>
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \\
 && rm -rf /var/lib/apt/lists/*
CMD [\"sh\", \"-c\", \"exec runuser -u postgres -- /usr/lib/postgresql/*/bin/postgres -D /var/lib/postgresql/$(ls /usr/lib/postgresql)/main -c config_file=/etc/postgresql/$(ls /usr/lib/postgresql)/main/postgresql.conf -c listen_addresses=\"]
";

const KV_DOCKERFILE: &str = "FROM << BASE_IMAGE >>
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/*
CMD [\"redis-server\", \"--protected-mode\", \"no\", \"--dir\", \"/data\", \"--save\", \"\"]
";

/// The runs `mesh snapshots --json` lists of `service` from `host`.
fn runs_of(mesh: &dyn Fn() -> Mesh, service: &str, host: &str) -> Vec<String> {
    mesh()
        .args(["snapshots", "--json", "--service", service])
        .run()
        .ok()
        .events()
        .iter()
        .filter(|e| e["event"] == "snapshot" && e["host"] == host)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn backups_go_to_the_fleets_garage_and_restore_postgres_rows_and_redis_keys() {
    let (lab, assets) = garage_lab("backup", 3, 40);
    let services = |text: String| {
        let text = text
            .replace(
                &format!("{}: {{", lab.host(1)),
                &format!("{}: {{ services: [pg],", lab.host(1)),
            )
            .replace(
                &format!("{}: {{", lab.host(2)),
                &format!("{}: {{ services: [kv],", lab.host(2)),
            )
            .replace(
                &format!("{}: {{", lab.host(3)),
                &format!("{}: {{ services: [kv],", lab.host(3)),
            );
        format!(
            "vars: {{ BASE_IMAGE: \"{}\" }}\ningress: {{ crowdsec: false }}\nbackup: {{ keep: {{ last: 2 }} }}\n{text}",
            util::base_image()
        )
    };
    let inv = lab.write_inventory("backup.yml", services);
    let df = tempfile::tempdir_in(util::repo_root().join("target")).unwrap();
    for (name, dockerfile, mesh_yml) in [
        ("pg", PG_DOCKERFILE, "backup:\n  dump: \"test ! -e /tmp/fail && runuser -u postgres -- pg_dumpall\"\n  restore: \"runuser -u postgres -- psql -q\"\n"),
        ("kv", KV_DOCKERFILE, "backup:\n  volumes: [kvdata]\n  dump: \"redis-cli save\"\n"),
    ] {
        let dir = df.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(dir.join("mesh.yml"), mesh_yml).unwrap();
    }
    std::fs::write(
        df.path().join("lab.yml"),
        "services:
  pg:
    restart: unless-stopped
    healthcheck: { test: [\"CMD\", \"runuser\", \"-u\", \"postgres\", \"--\", \"psql\", \"-c\", \"select 1\"], interval: 1s, retries: 60 }
  kv:
    restart: unless-stopped
    volumes: [\"kvdata:/data\"]
    healthcheck: { test: [\"CMD\", \"redis-cli\", \"ping\"], interval: 1s, retries: 60 }
volumes:
  kvdata: {}
",
    )
    .unwrap();
    let dir = df.path().to_str().unwrap().to_string();
    let mesh = || {
        Mesh::new(&inv)
            .env("MESH_ASSETS", assets.path())
            .env("MESH_DOCKERFILES", &dir)
    };
    mesh()
        .args(["nodes", "--first-ip", &lab.ip(1), "--only", "garage"])
        .run()
        .ok();
    assert!(!util::secret(&inv, "BACKUP_SECRET").is_empty());
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let psql = |i: usize, sql: &str| {
        lab.on(
            i,
            &format!(
                "docker exec $(docker ps -q --filter label=com.docker.compose.service=pg) runuser -u postgres -- psql -tA -c '{sql}'"
            ),
        )
    };
    let redis = |i: usize, args: &str| {
        lab.on(
            i,
            &format!("docker exec $(docker ps -q --filter label=com.docker.compose.service=kv) redis-cli {args}"),
        )
        .stdout
        .trim()
        .to_string()
    };
    util::eventually(|| psql(1, "select 1").ok_or_log());
    psql(
        1,
        "create table t (n int); insert into t select generate_series(1, 100)",
    )
    .ok_or_log()
    .unwrap();
    util::eventually(|| {
        (redis(2, "ping") == "PONG")
            .then_some(())
            .ok_or("redis".to_string())
    });
    for k in 1..=50 {
        redis(2, &format!("set k{k} v{k}"));
    }

    // A backup of both, with no secret on any command line of either host.
    let ps: Vec<_> = [1, 2].map(|i| util::PsSampler::start(lab.host(i))).into();
    let started = std::time::Instant::now();
    let first = mesh().args(["backup", "--json"]).run().ok();
    eprintln!("first backup: {:.1} s", started.elapsed().as_secs_f64());
    let argv: String = ps.into_iter().map(|p| p.finish()).collect();
    let out = first.stdout.clone();
    assert!(out.contains("pg: ok") && out.contains("kv: ok"), "{out}");
    let secrets = [
        util::secret(&inv, "RESTIC_PASSWORD"),
        util::secret(&inv, "BACKUP_SECRET"),
    ];
    let logs = std::process::Command::new("grep")
        .args(["-r", "-l", "-F", &secrets[0], "-F", &secrets[1]])
        .arg(inv.parent().unwrap().join(".mesh/logs"))
        .output()
        .unwrap();
    for s in &secrets {
        assert!(!argv.contains(s.as_str()), "a secret in a process list");
        assert!(!out.contains(s.as_str()), "a secret in --json");
    }
    assert!(
        logs.stdout.is_empty(),
        "a secret in a log: {}",
        String::from_utf8_lossy(&logs.stdout)
    );
    let env = lab.on(1, "stat -c %a /etc/mesh/restic.env").stdout;
    assert_eq!(env.trim(), "600");

    // The second backup of unchanged data adds little (restic deduplicates).
    let second = mesh().args(["backup"]).run().ok();
    eprintln!("second backup: {}", second.stdout);
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    assert_eq!(runs_of(&mesh, "pg", &h1).len(), 2);
    assert_eq!(runs_of(&mesh, "kv", &h2).len(), 2);

    // Destroy the data; restore brings back every row and key.
    psql(1, "drop table t").ok_or_log().unwrap();
    redis(2, "flushall");
    redis(2, "save");
    let started = std::time::Instant::now();
    let restored = mesh().args(["restore", "--service", "pg"]).run().ok();
    eprintln!(
        "restore pg: {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        restored.stdout
    );
    let started = std::time::Instant::now();
    mesh()
        .args(["restore", "--service", "kv", "--host", &h2])
        .run()
        .ok();
    eprintln!("restore kv: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(
        util::eventually(|| psql(1, "select count(*) from t").ok_or_log())
            .stdout
            .trim(),
        "100"
    );
    assert_eq!(redis(2, "dbsize"), "50");
    assert_eq!(redis(2, "get k7"), "v7");
    for (i, svc) in [(1, "pg"), (2, "kv")] {
        let health = lab.on(i, &format!("docker inspect -f '{{{{.State.Health.Status}}}}' $(docker ps -q --filter label=com.docker.compose.service={svc})"));
        assert_eq!(health.stdout.trim(), "healthy", "{svc}");
    }
    // Onto another host: host 2's keys appear on host 3.
    mesh()
        .args([
            "restore",
            "--service",
            "kv",
            "--host",
            &h3,
            "--from-host",
            &h2,
        ])
        .run()
        .ok();
    assert_eq!(redis(3, "get k42"), "v42");

    // A failing dump: exit 1, no new snapshot of pg, kv's still made.
    let (pg_before, kv_before) = (runs_of(&mesh, "pg", &h1), runs_of(&mesh, "kv", &h2));
    lab.on(
        1,
        "docker exec $(docker ps -q --filter label=com.docker.compose.service=pg) touch /tmp/fail",
    )
    .ok_or_log()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let failed = mesh().args(["backup"]).run().expect_code(1);
    assert!(failed.stdout.contains("pg"), "{}", failed.stdout);
    assert_eq!(runs_of(&mesh, "pg", &h1), pg_before);
    let kv_after = runs_of(&mesh, "kv", &h2);
    assert_ne!(kv_after, kv_before);
    // `mesh status` shows each service's last backup; a failed one is a problem.
    let status = mesh()
        .args(["status", "--service", "pg"])
        .run()
        .expect_code(1);
    assert!(
        status.stdout.contains("pg: the last backup (") && status.stdout.contains("failed: dump"),
        "{}",
        status.stdout
    );
    // Retention: keep last 2.
    assert_eq!(kv_after.len(), 2, "{kv_after:?}");

    // The timer's unit runs the same backup on the host.
    lab.on(
        1,
        "docker exec $(docker ps -q --filter label=com.docker.compose.service=pg) rm /tmp/fail",
    )
    .ok_or_log()
    .unwrap();
    assert!(lab
        .on(1, "systemctl is-enabled mesh-backup.timer")
        .stdout
        .contains("enabled"));
    lab.on(1, "systemctl start mesh-backup.service")
        .ok_or_log()
        .unwrap();
    let pg_after = runs_of(&mesh, "pg", &h1);
    assert_ne!(pg_after, pg_before, "the timer's backup made a snapshot");
    let status = mesh().args(["-v", "status", "--service", "pg"]).run();
    assert!(status.stdout.contains(" ago ok"), "{}", status.stdout);
    assert!(
        !status.stdout.contains("last backup ("),
        "{}",
        status.stdout
    );
    assert_eq!(pg_after.len(), 2);
    let table = mesh().args(["snapshots"]).run().ok().stdout;
    assert!(
        table.contains(&h1) && table.contains(&h2) && table.contains("kv"),
        "{table}"
    );
}

#[test]
fn status_names_a_drifted_route_and_a_stopped_container_and_exits_1() {
    let lab = Lab::start("status", 3, 33);
    lab.install_docker();
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = fleet_inventory(
        &lab,
        1,
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let (b1, w2, w3) = (lab.host(1), lab.host(2), lab.host(3));
    util::eventually(|| match util::http_get(&lab.ip(1), "web.example.test")? {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // A deploy's audit line on w2, as deploy writes it.
    lab.on(
        2,
        r#"mkdir -p /var/log/mesh && echo '{"time":"07:40:01","at":"2025-12-02T07:40:01Z","who":"ops@ctl","host":"x","service":"web","from":"mesh/web:1","to":"mesh/web:2","result":"running","seconds":3.1}' >> /var/log/mesh/deploy.log"#,
    );

    // A healthy fleet: exit 0, hosts folded into the count; -v lists them.
    util::eventually(|| mesh().args(["status"]).run().ok_or_log().map(|_| ()));
    let healthy = mesh().args(["status"]).run().ok();
    assert_eq!(
        healthy.stdout, "3 hosts: 3 healthy (-v lists them), 0 with problems, 0 failed\n",
        "{}",
        healthy.stderr
    );
    let all = mesh().args(["-v", "status"]).run().ok();
    for (host, svc) in [(&b1, "traefik"), (&w2, "web"), (&w3, "web")] {
        assert!(
            all.stdout
                .lines()
                .any(|l| l.starts_with(host.as_str()) && l.contains(svc) && l.contains("running")),
            "{host} {svc}:\n{}",
            all.stdout
        );
    }
    assert!(
        all.stdout.contains("ago running ops@ctl"),
        "the last deploy:\n{}",
        all.stdout
    );
    let json = mesh().args(["--json", "status"]).run().ok();
    let events = json.events();
    let w2_event = events
        .iter()
        .find(|e| e["event"] == "host_status" && e["host"] == w2.as_str())
        .unwrap();
    let web = &w2_event["services"][0];
    assert_eq!(web["service"], "web");
    assert_eq!(web["slot"], "a");
    assert_eq!(web["port"], 8000);
    assert_eq!(web["state"], "running");
    assert_eq!(web["health"], "healthy");
    assert_eq!(web["last_deploy"]["who"], "ops@ctl");
    let route = format!("traefik/http/services/web/loadbalancer/servers/{w2}/url");
    assert_eq!(
        w2_event["routes"][b1.as_str()][&route],
        format!("http://{}:8000", lab.ip(2))
    );
    assert!(w2_event["disks"][0]["avail_kb"].as_u64().unwrap() > 0);
    assert_eq!(w2_event["overlay"]["assigned"], true);
    assert_eq!(w2_event["overlay"]["peer_answers"], true);
    assert_eq!(events.last().unwrap()["event"], "status_summary");
    assert_eq!(events.last().unwrap()["ok"], true);

    // Drift: w2's route on the bastion points at the standby port; w3's
    // copy is stopped (its route still there).
    lab.redis(&format!("SET {route} http://{}:8001", lab.ip(2)));
    lab.on(
        3,
        "docker stop $(docker ps -q --filter label=com.docker.compose.service=web)",
    );
    let bad = mesh().args(["status"]).run().expect_code(1);
    let text = &bad.stdout;
    for needle in [
        format!("  ! web: route on {b1} points at :8001, host says :8000."),
        "  ! web: exited (code ".to_string(),
        format!("  ! web: route on {b1} points at :8000, but the copy does not serve."),
        "3 hosts: 1 healthy (-v lists them), 2 with problems, 0 failed".to_string(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        text.starts_with("HOST ") && !text.contains(&format!("\n{b1} ")),
        "problems only, the healthy bastion folded:\n{text}"
    );
    // --limit and --service narrow it; the bastion outside --limit is still read.
    let one = mesh()
        .args(["--limit", &w2, "status", "--service", "web"])
        .run()
        .expect_code(1);
    assert!(
        one.stdout.contains(":8001, host says :8000") && !one.stdout.contains(&w3),
        "{}",
        one.stdout
    );
    assert!(one
        .stdout
        .ends_with("1 hosts: 0 healthy, 1 with problems, 0 failed\n"));
    mesh()
        .args(["--limit", &b1, "status", "--service", "web"])
        .run()
        .expect_code(1);
    mesh()
        .args(["status", "--service", "../web"])
        .run()
        .expect_code(2);
    // Fixed again: exit 0.
    mesh().args(["services-up"]).run().ok();
    util::eventually(|| mesh().args(["status"]).run().ok_or_log().map(|_| ()));
}

/// A service that prints a numbered line with its host and a secret every
/// half second, to its output and to /containers/log/ticker/app.log.
const TICKER_DOCKERFILE: &str = r#"FROM << BASE_IMAGE >>
CMD ["sh", "-c", "trap 'exit 0' TERM; n=0; while :; do n=$((n+1)); echo \"tick $n from $HOST token=$TOKEN\"; echo \"file $n from $HOST\" >> /var/log/ticker/app.log; sleep 0.5; done"]
"#;

#[test]
fn logs_follow_streams_every_host_until_ctrl_c() {
    let lab = Lab::start("logs", 2, 34);
    lab.install_docker();
    let df = tempfile::tempdir_in(util::repo_root().join("target")).unwrap();
    std::fs::create_dir_all(df.path().join("ticker")).unwrap();
    std::fs::write(df.path().join("ticker/Dockerfile"), TICKER_DOCKERFILE).unwrap();
    std::fs::write(df.path().join("ticker/mesh.yml"), "logs: [app.log]\n").unwrap();
    std::fs::write(
        df.path().join("lab.yml"),
        "services:\n  ticker:\n    restart: unless-stopped\n    environment: { HOST: \"<< HOSTNAME >>\", TOKEN: \"<< LOGS_TOKEN >>\" }\n    volumes: [\"/containers/log/ticker:/var/log/ticker\"]\n",
    )
    .unwrap();
    let token = format!("tok{}", util::now_nanos());
    std::fs::write(lab.dir.join("secrets.env"), format!("LOGS_TOKEN={token}\n")).unwrap();
    let inv = lab.write_inventory("logs.yml", |text| {
        format!("vars: {{ BASE_IMAGE: \"{}\" }}\n{text}", util::base_image())
    });
    let mesh = || Mesh::new(&inv);
    let dir = df.path().to_str().unwrap();
    mesh().args(["services", "--dockerfiles", dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let (h1, h2) = (lab.host(1), lab.host(2));

    // Each host's last lines, prefixed by the host, the secret redacted.
    let once = util::eventually(|| {
        let run = mesh()
            .args(["logs", "ticker", "--tail", "3"])
            .run()
            .ok_or_log()?;
        let per = |h: &str| {
            run.stdout
                .lines()
                .filter(|l| l.starts_with(&format!("{h} | tick ")))
                .count()
        };
        (per(&h1) == 3 && per(&h2) == 3)
            .then_some(run.stdout.clone())
            .ok_or(format!("{}{}", run.stdout, run.stderr))
    });
    assert!(!once.contains(&token), "the secret leaked:\n{once}");
    assert!(once.contains(&format!("from {h1} token=***")), "{once}");
    let file = mesh()
        .args(["logs", "ticker", "--file", "app.log", "--tail", "2"])
        .run()
        .ok();
    assert_eq!(
        file.stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{h2} | file ")))
            .count(),
        2,
        "{}",
        file.stdout
    );
    let traversal = mesh()
        .args(["logs", "ticker", "--file", "../../../etc/shadow"])
        .run()
        .expect_code(2);
    assert!(traversal.stderr.contains("Fix:"), "{}", traversal.stderr);
    let none = mesh().args(["logs", "nope"]).run().expect_code(1);
    assert!(
        none.stderr.contains("no container of nope"),
        "{}",
        none.stderr
    );

    // --follow: new lines from both hosts as they come, until Ctrl-C.
    let out_path = lab.dir.join("follow.out");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("-i")
        .arg(&inv)
        .args([
            "--progress",
            "never",
            "logs",
            "ticker",
            "--follow",
            "--tail",
            "1",
        ])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = |h: &str| {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{h} | tick ")))
            .count()
    };
    util::eventually_within(20, || {
        let (a, b) = (seen(&h1), seen(&h2));
        (a >= 4 && b >= 4)
            .then_some(())
            .ok_or(format!("lines so far: {a} from {h1}, {b} from {h2}"))
    });
    let followers = |i: usize| lab.on(i, "pgrep -af 'docker [l]ogs' || true").stdout;
    assert!(!followers(1).trim().is_empty(), "no docker logs on {h1}");
    let pid = child.id().to_string();
    let t0 = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "logs --follow: exit {} {:?} after SIGINT",
        out.status,
        t0.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(8));
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(!text.contains(&token), "the secret leaked:\n{text}");
    assert!(
        text.lines()
            .all(|l| l.starts_with(&format!("{h1} | ")) || l.starts_with(&format!("{h2} | "))),
        "every line prefixed by its host:\n{text}"
    );
    util::eventually_within(5, || {
        let left: Vec<String> = (1..=2).map(followers).collect();
        left.iter()
            .all(|s| s.trim().is_empty())
            .then_some(())
            .ok_or(format!("docker logs left on the hosts: {left:?}"))
    });
    let ssh = std::process::Command::new("pgrep")
        .args(["-af", &format!("mesh-{pid}-[0-9a-f]")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ssh.stdout).trim(), "");
}

/// The image host `i` records as live for `service`.
fn live_image(lab: &Lab, i: usize, service: &str) -> String {
    lab.on(
        i,
        &format!("sed -n 's/^image //p' /var/lib/mesh/deploy/{service}.state"),
    )
    .stdout
    .trim()
    .to_string()
}

/// The `mesh/<service>:*` tags host `i` has, sorted.
fn image_tags(lab: &Lab, i: usize, service: &str) -> Vec<String> {
    let mut tags: Vec<String> = lab
        .on(
            i,
            &format!("docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' mesh/{service}"),
        )
        .stdout
        .lines()
        .map(str::to_string)
        .collect();
    tags.sort();
    tags
}

/// What the `images` step said on `host` in a `--json` run.
fn images_output(run: &util::Run, host: &str) -> String {
    run.events()
        .into_iter()
        .find(|e| e["event"] == "step_done" && e["step"] == "images" && e["host"] == host)
        .unwrap_or_else(|| panic!("no images step on {host}:\n{}", run.stdout))["output"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn hosts_keep_exactly_the_live_image_and_the_rollback_window_and_prune_the_rest() {
    let lab = Lab::start("gc", 3, 35);
    lab.install_docker();
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory(
        "gc.yml",
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    mesh().args(["services-up"]).run().ok();
    let bastion = lab.ip(1);
    let index = df.path().join("web/index.html");
    let deploy = |extra: &[&str]| {
        mesh()
            .args([
                "--json",
                "deploy",
                "--service",
                "web",
                "--dockerfiles",
                &dir,
            ])
            .args(extra)
            .run()
            .ok()
    };

    // Five deploys: b1 (services-up) .. b6.
    let mut builds = vec![live_image(&lab, 2, "web")];
    let mut last = None;
    for n in 2..=6 {
        std::fs::write(&index, format!("gc build {n}\n")).unwrap();
        last = Some(deploy(&[]));
        builds.push(live_image(&lab, 2, "web"));
    }
    assert_eq!(
        builds
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        6,
        "{builds:?}"
    );
    let last = last.unwrap();
    let mut window: Vec<String> = builds[2..].to_vec();
    window.sort();
    for i in 2..=3 {
        assert_eq!(live_image(&lab, i, "web"), builds[5]);
        // Exactly the live image and the three --rollback can reach.
        assert_eq!(image_tags(&lab, i, "web"), window, "host {i}");
        let said = images_output(&last, &lab.host(i));
        assert!(said.starts_with("removed 1 image, freed "), "{said}");
        assert!(said.contains(" on /var/lib/docker"), "{said}");
    }
    // The bastion keeps its one traefik image.
    assert_eq!(image_tags(&lab, 1, "traefik").len(), 1);

    // --rollback still reaches the previous build.
    deploy(&["--rollback"]);
    for i in 2..=3 {
        assert_eq!(live_image(&lab, i, "web"), builds[4]);
    }
    for _ in 0..4 {
        let body = util::http_get(&bastion, "web.example.test").unwrap().1;
        assert!(body.contains("gc build 5"), "rolled back: {body}");
    }
    // Forward to b6 again, then b7 without the collection: b3 stays behind.
    deploy(&[]);
    std::fs::write(&index, "gc build 7\n").unwrap();
    deploy(&["--skip", "images"]);
    let b3 = builds[2].clone();
    for i in 2..=3 {
        assert!(image_tags(&lab, i, "web").contains(&b3), "host {i}");
    }
    // A stopped container on host 2 uses b3: that host keeps it.
    assert_eq!(
        lab.on(2, &format!("docker create --name gc-keep {b3} true"))
            .code,
        0
    );

    // --dry-run lists and changes nothing.
    let dry = mesh().args(["--json", "--dry-run", "prune"]).run().ok();
    let said = images_output(&dry, &lab.host(3));
    assert!(said.starts_with("would remove 1 image ("), "{said}");
    assert!(said.ends_with(&format!("): {b3}")), "{said}");
    assert_eq!(images_output(&dry, &lab.host(2)), "");
    assert!(image_tags(&lab, 3, "web").contains(&b3));
    assert!(
        dry.stdout.contains("\"event\":\"controller_cache\""),
        "{}",
        dry.stdout
    );

    // prune removes it where nothing uses it; a re-run changes nothing.
    let run = mesh().args(["--json", "prune"]).run().ok();
    assert!(
        images_output(&run, &lab.host(3)).starts_with("removed 1 image, freed "),
        "{}",
        run.stdout
    );
    assert!(!image_tags(&lab, 3, "web").contains(&b3));
    assert!(image_tags(&lab, 2, "web").contains(&b3), "in use on host 2");
    for i in 2..=3 {
        assert_eq!(image_tags(&lab, i, "web").len(), 4 + usize::from(i == 2));
    }
    let again = mesh().args(["--json", "prune"]).run().ok();
    for h in again.summary()["hosts"].as_array().unwrap() {
        assert_eq!(h["changed"], 0, "{h}");
    }
    let body = util::http_get(&bastion, "web.example.test").unwrap().1;
    assert!(body.contains("gc build 7"), "{body}");
}

#[test]
fn a_host_without_room_for_the_image_fails_before_anything_is_written() {
    let lab = Lab::start("room", 3, 36);
    lab.install_docker();
    // Host 3's Docker data root: a 640 MB tmpfs mounted before Docker
    // starts again, then truly filled up to 50 MB free.
    let fill = lab.on(
        3,
        "systemctl stop docker.socket docker && mount -t tmpfs -o size=640m mesh-room /var/lib/docker \
         && systemctl start docker && test \"$(docker info --format '{{.DockerRootDir}}')\" = /var/lib/docker \
         && free=$(df -Pk /var/lib/docker | awk 'NR==2 {print $4}') \
         && fallocate -l $((free - 50 * 1024))k /var/lib/docker/filler",
    );
    assert_eq!(fill.code, 0, "{}{}", fill.stdout, fill.stderr);
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory(
        "room.yml",
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    let run = mesh()
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .expect_code(1);
    let summary = run.summary();
    util::assert_only_failed(
        &summary,
        &lab.host(3),
        " MB free on /var/lib/docker, the image mesh/web:",
    );
    let error = summary["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == lab.host(3))
        .unwrap()["failed"]
        .as_str()
        .unwrap();
    eprintln!("host 3 said: {error}");
    // About the 50 MB left, said by the host's name.
    let free = error
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(" MB free"))
        .map(|(head, _)| head.rsplit(' ').next().unwrap().parse::<u64>().unwrap());
    assert!(
        error.contains(&format!("{}: ", lab.host(3)))
            && free.is_some_and(|f| (45..=55).contains(&f)),
        "{error}"
    );
    assert!(
        error.contains(" needs ") && error.contains("nothing was shipped"),
        "{error}"
    );
    // Nothing was written on host 3; host 2 got everything.
    assert_eq!(
        lab.on(3, "test -e /containers").code,
        1,
        "host 3 was written to"
    );
    assert_eq!(image_tags(&lab, 3, "web"), Vec::<String>::new());
    assert_eq!(image_tags(&lab, 2, "web").len(), 1);
    assert_eq!(
        lab.on(2, "test -f /containers/build/web/.mesh-compose.yml")
            .code,
        0
    );

    // Room made: the same run succeeds there too.
    assert_eq!(lab.on(3, "rm /var/lib/docker/filler").code, 0);
    mesh().args(["services", "--dockerfiles", &dir]).run().ok();
    assert_eq!(image_tags(&lab, 3, "web").len(), 1);
}

/// The detail of the `image mesh/<service>:…` op on `host` in a `--json`
/// run (what came which way), if it changed there.
fn image_shipped(run: &util::Run, host: &str, service: &str) -> Option<String> {
    let prefix = format!("image mesh/{service}:");
    run.events()
        .into_iter()
        .filter(|e| e["event"] == "step_done" && e["host"] == host)
        .flat_map(|e| e["ops"].as_array().cloned().unwrap_or_default())
        .find(|op| op["label"].as_str().is_some_and(|l| l.starts_with(&prefix)))
        .map(|op| op["detail"].as_str().unwrap_or_default().to_string())
}

/// `(layers sent, layers in the image, bytes by ssh)` from an image op's detail.
fn shipped_counts(detail: &str) -> (usize, usize, u64) {
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{s:?} in {detail}"))
    };
    let (sent, rest) = detail
        .split_once(" of ")
        .unwrap_or_else(|| panic!("{detail}"));
    let of = rest.split_whitespace().next().unwrap();
    let ssh = detail
        .split(" by ssh")
        .next()
        .and_then(|head| head.rsplit(['(', ':']).next())
        .map(|s| {
            s.trim()
                .trim_end_matches(" bytes)")
                .trim_end_matches(" bytes")
        })
        .map(num)
        .unwrap_or_else(|| panic!("no ssh bytes in {detail}"));
    (num(sent) as usize, num(of) as usize, ssh)
}

/// Write `page` as web's index.html in `df` and deploy web (`--json`, and `extra`).
fn deploy_web_change(
    mesh: &dyn Fn() -> Mesh,
    df: &std::path::Path,
    page: &str,
    extra: &[&str],
) -> util::Run {
    std::fs::write(df.join("web/index.html"), page).unwrap();
    mesh()
        .args(["--json", "deploy", "--service", "web", "--dockerfiles"])
        .args([df.to_str().unwrap()])
        .args(extra.iter().copied())
        .run()
        .ok()
}

#[test]
fn a_one_file_change_ships_only_the_top_layer_and_every_host_loads_the_controllers_image() {
    let lab = Lab::start("layers", 3, 41);
    lab.install_docker();
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    let inv = lab.services_inventory(
        "layers.yml",
        &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
    );
    let mesh = || Mesh::new(&inv);
    // 60 MiB of incompressible data in web's context (not in its image):
    // hashed into the tag, never sent to a host.
    let big = std::process::Command::new("head")
        .args(["-c", "62914560", "/dev/urandom"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(df.path().join("web/big.bin"), big).unwrap();
    let first = mesh()
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .ok();
    mesh().args(["services-up"]).run().ok();
    for i in 2..=3 {
        assert_eq!(shipped_context(&lab, i, "web"), "", "host {i}");
        eprintln!(
            "host {i}: shipped context bytes: web {} of {}",
            context_bytes_on(&lab, i, "web"),
            context_bytes(&df.path().join("web"))
        );
        let said = image_shipped(&first, &lab.host(i), "web").expect("the web image shipped");
        let (sent, of, ssh) = shipped_counts(&said);
        assert_eq!(sent, of, "a new host gets every layer: {said}");
        assert!(ssh > 10_000_000, "the whole image: {said}");
    }

    // One file changes: each host gets the new top layer only.
    let deploy = deploy_web_change(&mesh, df.path(), "one line changed\n", &[]);
    let tag = live_image(&lab, 2, "web");
    let controller = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &tag])
        .output()
        .unwrap();
    let controller = String::from_utf8_lossy(&controller.stdout).to_string();
    assert!(controller.starts_with("sha256:"), "{tag} on the controller");
    for i in 2..=3 {
        let said = image_shipped(&deploy, &lab.host(i), "web").expect("the new build shipped");
        let (sent, of, ssh) = shipped_counts(&said);
        assert_eq!(sent, 1, "only the top layer: {said}");
        assert!(of >= 3, "{said}");
        assert!(ssh < 50_000, "a few kB, not the image: {said}");
        assert_eq!(live_image(&lab, i, "web"), tag);
        let on_host = lab.on(
            i,
            &format!("docker image inspect --format '{{{{.Id}}}}' {tag}"),
        );
        assert_eq!(on_host.stdout.trim(), controller.trim(), "host {i}");
        // Nothing staged is left behind.
        let left = lab.on(i, "ls /var/lib/docker/tmp | grep -c '^mesh-load' || true");
        assert_eq!(left.stdout.trim(), "0", "host {i}");
    }
    let body = util::http_get(&lab.ip(1), "web.example.test").unwrap().1;
    assert!(body.contains("one line changed"), "{body}");

    // Converged: nothing ships.
    let again = mesh()
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .ok();
    for i in 2..=3 {
        assert_eq!(image_shipped(&again, &lab.host(i), "web"), None);
    }
}

/// `(layers put into garage, bytes from garage)` from an image op's detail.
fn garage_counts(detail: &str) -> (usize, u64) {
    let puts = detail
        .split_once(" put into garage)")
        .and_then(|(head, _)| head.rsplit('(').next())
        .map_or(0, |n| n.trim().parse().unwrap());
    let fetched = detail
        .split(" from garage")
        .next()
        .filter(|_| detail.contains(" from garage"))
        .and_then(|head| head.rsplit([',', '(']).next())
        .map(|s| {
            s.trim()
                .trim_end_matches(" bytes)")
                .trim_end_matches(" bytes")
        })
        .unwrap_or_else(|| panic!("no garage bytes in {detail}"));
    (puts, fetched.parse().unwrap())
}

/// Each layer's object in the images' bucket: garage's own count of them.
fn bucket_objects(lab: &Lab) -> u64 {
    let info = lab.on(1, "garage bucket info mesh-images").stdout;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Objects:"))
        .unwrap_or_else(|| panic!("no object count in:\n{info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn images_go_once_through_garage_a_corrupt_layer_is_refused_and_a_stopped_garage_falls_back() {
    let (lab, assets) = garage_lab("fanout", 5, 42);
    let df = util::example_dockerfiles();
    let dir = df.path().to_str().unwrap().to_string();
    // Hosts 2-4 run web; host 5 runs nothing yet. Garage spans three zones.
    let write = |spare: bool| {
        let inv = lab.services_inventory(
            "fanout.yml",
            &services_vars(&lab, "web.example.test").replace("crowdsec: true", "crowdsec: false"),
        );
        let mut text = std::fs::read_to_string(&inv).unwrap();
        for i in 1..=5 {
            let ip = lab.ip(i);
            text = text.replace(
                &format!("overlay_ip: {ip},"),
                &format!("overlay_ip: {ip}, zone: z{},", (i - 1) % 3 + 1),
            );
        }
        if spare {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{}:", lab.host(5))))
                .unwrap()
                .to_string();
            text = text.replace(&format!("{line}\n"), "");
            text.push_str(&format!("  spare:\n    hosts:\n{line}\n"));
        }
        std::fs::write(&inv, text).unwrap();
        inv
    };
    let inv = write(true);
    let mesh = || Mesh::new(&inv).env("MESH_ASSETS", assets.path());
    mesh()
        .args(["nodes", "--first-ip", &lab.ip(1), "--only", "garage"])
        .run()
        .ok();
    let key = util::secret(&inv, "IMAGES_KEY");
    let secret = util::secret(&inv, "IMAGES_SECRET");

    // A new image to three hosts: each layer leaves the controller once.
    let first = mesh()
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .ok();
    let tag = {
        let said = image_shipped(&first, &lab.host(2), "web").expect("web shipped");
        assert!(said.contains("from garage"), "{said}");
        live_image_tag(&first, &lab.host(2))
    };
    let controller_id = |tag: &str| {
        let out = std::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", tag])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (mut puts, mut by_ssh, mut layers) = (0, 0, 0);
    for i in 2..=4 {
        let said = image_shipped(&first, &lab.host(i), "web").unwrap();
        let (sent, of, ssh) = shipped_counts(&said);
        let (put, fetched) = garage_counts(&said);
        assert_eq!(sent, of, "a new host gets every layer: {said}");
        layers = of;
        puts += put;
        by_ssh += ssh;
        assert!(ssh + fetched > 10_000_000, "the whole image came: {said}");
        let id = lab.on(
            i,
            &format!("docker image inspect --format '{{{{.Id}}}}' {tag}"),
        );
        assert_eq!(id.stdout.trim(), controller_id(&tag), "host {i}");
    }
    assert_eq!(puts, layers, "one PUT per layer in all");
    let one_copy = {
        let said = image_shipped(&first, &lab.host(2), "web").unwrap();
        let (_, _, ssh) = shipped_counts(&said);
        ssh + garage_counts(&said).1
    };
    assert_eq!(
        by_ssh, one_copy,
        "the controller sent one copy of the image"
    );
    assert_eq!(
        bucket_objects(&lab),
        layers as u64,
        "garage holds each layer once"
    );
    // The bastion alone gets traefik: straight by SSH.
    let traefik = image_shipped(&first, &lab.host(1), "traefik").expect("traefik shipped");
    assert!(!traefik.contains("garage"), "{traefik}");
    mesh().args(["services-up"]).run().ok();

    // A one-file change under --ship auto: its one small layer to three
    // hosts is far under the 1 MiB that garage is worth, so it goes by SSH
    // and the bucket gets nothing.
    let objects = bucket_objects(&lab);
    let small = deploy_web_change(&mesh, df.path(), "small change\n", &[]);
    for i in 2..=4 {
        let said = image_shipped(&small, &lab.host(i), "web").expect("web deployed");
        assert!(!said.contains("garage"), "host {i}: {said}");
        let (sent, _, ssh) = shipped_counts(&said);
        assert_eq!(sent, 1, "only the top layer: {said}");
        assert!(ssh > 0 && ssh < 100_000, "host {i}: {said}");
    }
    assert_eq!(bucket_objects(&lab), objects, "nothing went into garage");

    // Another one-file change through garage while host 4's garage is
    // stopped: it gets the new layer by SSH and says why; the others
    // through garage.
    lab.on(4, "systemctl stop garage").ok_or_log().unwrap();
    let deploy = deploy_web_change(&mesh, df.path(), "fanned out\n", &["--ship", "garage"]);
    lab.on(4, "systemctl start garage").ok_or_log().unwrap();
    let said = image_shipped(&deploy, &lab.host(4), "web").expect("host 4 got the new build");
    assert!(
        said.contains("garage is not running on this host: by ssh"),
        "{said}"
    );
    assert_eq!(shipped_counts(&said).0, 1, "only the top layer: {said}");
    let new_tag = live_image(&lab, 2, "web");
    let put: usize = (2..=3)
        .map(|i| {
            let said = image_shipped(&deploy, &lab.host(i), "web").unwrap();
            garage_counts(&said).0
        })
        .sum();
    assert_eq!(put, 1, "the new top layer went into garage once");
    for i in 2..=4 {
        assert_eq!(live_image(&lab, i, "web"), new_tag, "host {i}");
    }

    // The new top layer's object corrupted in the bucket: host 5, new to web,
    // refuses it by its sha256, gets it by SSH and never loads the bad one.
    let top = lab
        .on(
            2,
            &format!("docker image inspect --format '{{{{json .RootFS.Layers}}}}' {new_tag}"),
        )
        .stdout;
    let top: Vec<String> = serde_json::from_str(top.trim()).unwrap();
    let top = top
        .last()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    lab.on(
        1,
        &format!(
            "head -c 4096 /dev/urandom > /tmp/bad && curl -fsS --aws-sigv4 aws:amz:garage:s3 --user '{key}:{secret}' \
             -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T /tmp/bad http://127.0.0.1:3900/mesh-images/layers/{top}.zst"
        ),
    )
    .ok_or_log()
    .unwrap();
    let inv = write(false);
    let third = Mesh::new(&inv)
        .env("MESH_ASSETS", assets.path())
        .args(["--json", "services", "--dockerfiles", &dir])
        .run()
        .ok();
    let said = image_shipped(&third, &lab.host(5), "web").expect("host 5 got web");
    assert!(
        said.contains(&format!("layer sha256:{top} was corrupt in garage")),
        "{said}"
    );
    let id = lab.on(
        5,
        &format!("docker image inspect --format '{{{{.Id}}}}' {new_tag}"),
    );
    assert_eq!(id.stdout.trim(), controller_id(&new_tag));
    let left = lab.on(5, "ls /var/lib/docker/tmp | grep -c '^mesh-load' || true");
    assert_eq!(left.stdout.trim(), "0", "nothing staged is left");
    // Put back: the object is the layer again.
    let back = lab.on(
        1,
        &format!(
            "curl -fsS --aws-sigv4 aws:amz:garage:s3 --user '{key}:{secret}' \
             -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' http://127.0.0.1:3900/mesh-images/layers/{top}.zst | zstd -dcq | sha256sum"
        ),
    );
    assert!(back.stdout.starts_with(&top), "{}", back.stdout);
}

/// The tag of the web image a run shipped to `host` (from its op label).
fn live_image_tag(run: &util::Run, host: &str) -> String {
    run.events()
        .into_iter()
        .filter(|e| e["event"] == "step_done" && e["host"] == host)
        .flat_map(|e| e["ops"].as_array().cloned().unwrap_or_default())
        .find_map(|op| {
            op["label"]
                .as_str()?
                .strip_prefix("image mesh/web:")
                .map(|t| format!("mesh/web:{t}"))
        })
        .expect("an image op")
}
