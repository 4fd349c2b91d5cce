//! Operating a sandbox: deny events (`run --log-denials`, `events`), the
//! counters and the event rate limit in `status`, audit mode, `verify`,
//! `update` while a process inside keeps connecting, and pinned-domain
//! allow rules resolved from `/etc/hosts`.

use std::{
    fs,
    net::IpAddr,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use sbx_tests::{describe, probe, Background, Fixture, HostsEntry, Proto::Tcp, Sbx, TempDir, TestCgroup};
// A dependency of the fixture crate this test file does not use directly.
use libc as _;
use sbx_user as _;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `(allowed, denied)` of `hook` in a status entry's counters, which are
/// `[hook, allowed, denied]` triples.
fn counter(entry: &serde_json::Value, hook: &str) -> (u64, u64) {
    let hooks = entry["counters"]["hooks"].as_array().unwrap_or_else(|| panic!("no counters: {entry:#}"));
    let h = hooks.iter().find(|h| h[0] == hook).unwrap_or_else(|| panic!("no counter for {hook}: {entry:#}"));
    (h[1].as_u64().expect("a count"), h[2].as_u64().expect("a count"))
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g.
/// `0-3`): the event rate limit is per CPU.
fn possible_cpus() -> u64 {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").expect("reading the possible CPUs");
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().expect("a CPU number") - a.parse::<u64>().expect("a CPU number") + 1,
            None => 1,
        })
        .sum()
}

/// Asserts one event's fields one by one.
#[expect(clippy::too_many_arguments, reason = "one argument per field checked")]
fn assert_event(
    e: &serde_json::Value,
    cg: &TestCgroup,
    pid: u32,
    hook: &str,
    protocol: &str,
    destination: &str,
    verdict: &str,
    rule: &str,
) {
    assert_eq!(e["hook"], hook, "hook: {e:#}");
    assert_eq!(e["protocol"], protocol, "protocol: {e:#}");
    assert_eq!(e["destination"], destination, "destination: {e:#}");
    assert_eq!(e["verdict"], verdict, "verdict: {e:#}");
    assert_eq!(e["pid"], pid, "pid: {e:#}");
    // sbx-probe is single-threaded.
    assert_eq!(e["tid"], pid, "tid: {e:#}");
    assert_eq!(e["comm"], "sbx-probe", "comm: {e:#}");
    assert_eq!(e["rule"], rule, "rule: {e:#}");
    assert_eq!(e["cgroup_id"], cg.id(), "cgroup_id: {e:#}");
    assert_eq!(e["sandbox"], cg.arg(), "sandbox: {e:#}");
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "time: {e:#}");
}

/// The events of `pid`, which must be exactly one.
fn one_event_of(events: &[serde_json::Value], pid: u32) -> &serde_json::Value {
    let mine: Vec<_> = events.iter().filter(|e| e["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "expected one event of pid {pid}: {events:#?}");
    mine[0]
}

#[test]
fn events_json_names_hook_destination_process_rule_and_sandbox() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    fx.attach(&["--deny", "private"]);
    let p = fx.inside();
    let (a, v6) = (n.ns_v4.to_string(), n.ns_v6.to_string());
    let private = "deny private (--deny)";
    let cases: [(&[&str], &str, &str, String, &str); 5] = [
        (&["connect", "tcp", &a, "8080"], "connect4", "tcp", format!("{a}:8080"), private),
        (&["connect", "tcp", &v6, "8080"], "connect6", "tcp", format!("[{v6}]:8080"), private),
        (&["sendto", &a, "9999"], "sendmsg4", "udp", format!("{a}:9999"), private),
        (&["sendto", &v6, "9999"], "sendmsg6", "udp", format!("[{v6}]:9999"), private),
        // The default bind setting: loopback, and the unspecified address
        // with port 0 only.
        (&["bind", "udp", "0.0.0.0", "8080"], "bind4", "udp", "0.0.0.0:8080".to_owned(), "bind = \"loopback\""),
    ];
    let mut pids = Vec::new();
    for (args, ..) in &cases {
        let (pid, result) = p.run_pid(args);
        assert_eq!(result, "err EPERM", "{args:?}");
        pids.push(pid);
    }
    let events = fx.sbx.events(&fx.cg);
    assert_eq!(events.len(), cases.len(), "one event per denial, nothing else: {events:#?}");
    for ((args, hook, protocol, destination, rule), pid) in cases.iter().zip(&pids) {
        let e = one_event_of(&events, *pid);
        eprintln!("{args:?}: {e}");
        assert_event(e, &fx.cg, *pid, hook, protocol, destination, "denied", rule);
    }
    // `events` consumes what it shows.
    assert_eq!(fx.sbx.events(&fx.cg), Vec::<serde_json::Value>::new(), "events were drained");

    // The table form has the same fields.
    let (pid, result) = p.run_pid(&["connect", "tcp", &a, "8081"]);
    assert_eq!(result, "err EPERM");
    let out = fx.sbx.ok(&["events", "--cgroup", fx.cg.arg()]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one event: {text}");
    assert!(lines[0].starts_with("TIME") && lines[0].ends_with("RULE"), "{text}");
    let fields: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        fields[1..],
        [
            "denied",
            &format!("{pid}/{pid}"),
            "sbx-probe",
            "connect4",
            "tcp",
            &format!("{a}:8081"),
            "deny",
            "private",
            "(--deny)"
        ],
        "{text}"
    );

    // The process names itself (here through the name of the file it was
    // started from): control characters, which would move the cursor or
    // retitle the terminal of whoever reads the events, are shown as `?`.
    let dir = TempDir::new("sbx-test-comm");
    let named = dir.path().join("\u{1b}[2K\u{1b}]0;x\u{7}y");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sbx-probe"), &named).expect("symlink to the probe");
    let (pid, result) = sbx_tests::Probe::new(&named).in_cgroup(fx.cg.path()).run_pid(&["connect", "tcp", &a, "8082"]);
    assert_eq!(result, "err EPERM");
    let out = fx.sbx.ok(&["events", "--cgroup", fx.cg.arg()]);
    let text = stdout(&out);
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "control characters printed: {text:?}");
    let line = text.lines().find(|l| l.contains(&format!(" {pid}/{pid} "))).unwrap_or_else(|| panic!("{text:?}"));
    assert_eq!(line.split_whitespace().nth(3), Some("?[2K?]0;x?y"), "{text:?}");
}

#[test]
fn run_log_denials_prints_one_line_per_denial_with_hook_destination_and_rule() {
    let fx = Fixture::new(probe!());
    let net = &fx.net;
    net.serve_tcp(8080);
    let probe = fx.probe.arg();
    let (deny4, allow4, deny6) = (net.ns_v4, net.ns_v4b, net.ns_v6);
    let script = format!(
        "{probe} connect tcp {deny4} 8080; {probe} connect tcp {allow4} 8080; {probe} sendto {deny6} 9999; \
         {probe} connect tcp {deny6} 8080; {probe} sendto {allow4} 9999"
    );
    let out = fx.sbx.run_output(
        &fx.cg,
        &["--log-denials", "--deny", "private", "--allow", &format!("tcp://{allow4}:8080")],
        &["sh", "-c", &script],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "err EPERM\nok\nerr EPERM\nerr EPERM\nerr EPERM\n", "{}", describe(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("sbx: ")).collect();
    let expected = [
        ("connect4", "tcp", format!("{deny4}:8080")),
        ("sendmsg6", "udp", format!("[{deny6}]:9999")),
        ("connect6", "tcp", format!("[{deny6}]:8080")),
        ("sendmsg4", "udp", format!("{allow4}:9999")),
    ];
    assert_eq!(lines.len(), expected.len(), "one line per denial: {}", describe(&out));
    for (line, (hook, proto, dest)) in lines.iter().zip(&expected) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sbx: TIME VERDICT PID/TID COMM HOOK PROTO DESTINATION RULE...
        assert_eq!(fields[2], "denied", "{line}");
        assert_eq!(fields[4], "sbx-probe", "{line}");
        assert_eq!(fields[5], *hook, "{line}");
        assert_eq!(fields[6], *proto, "{line}");
        assert_eq!(fields[7], dest, "{line}");
        assert!(line.ends_with(" deny private (--deny)"), "{line}");
    }
}

#[test]
fn a_flood_of_denials_is_counted_exactly_and_its_events_are_rate_limited() {
    const FLOOD: u64 = 20_000;
    // Per CPU: a burst of 1000 events, then 1000 per second (one per ms).
    const BURST: u64 = 1000;
    const PER_MS: u64 = 1;
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    fx.attach(&["--deny", "private"]);
    let started = Instant::now();
    let (pid, result) = fx.inside().run_pid(&["repeat", "tcp", &n.ns_v4.to_string(), "8080", &FLOOD.to_string()]);
    assert_eq!(result, format!("EPERM {FLOOD}"));
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(counter(&e, "connect4"), (0, FLOOD), "every call is counted, allowed/denied: {e:#}");
    let dropped = e["counters"]["events_dropped"].as_u64().expect("a count");
    assert!(dropped > 0, "20000 denials cannot all become events: {e:#}");

    let events = fx.sbx.events(&fx.cg);
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).expect("a short test") + 1;
    let cpus = possible_cpus();
    let bound = usize::try_from(cpus * (BURST + PER_MS * elapsed_ms)).expect("fits");
    eprintln!("{} events, {dropped} dropped, in {elapsed_ms} ms on {cpus} CPUs (bound {bound})", events.len());
    assert!(!events.is_empty(), "some events get through");
    assert!(events.len() <= bound, "{} events in {elapsed_ms} ms exceed the rate limit bound {bound}", events.len());
    for ev in &events {
        assert_event(
            ev,
            &fx.cg,
            pid,
            "connect4",
            "tcp",
            &format!("{}:8080", n.ns_v4),
            "denied",
            "deny private (--deny)",
        );
    }
    // No more came in later.
    assert_eq!(fx.sbx.events(&fx.cg).len(), 0);
}

#[test]
fn audit_mode_reports_would_be_denials_and_update_switches_to_enforce() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    fx.attach(&["--audit", "--deny", "private"]);
    assert_eq!(fx.sbx.status(&fx.cg)["policy"]["mode"], "audit");
    let p = fx.inside();
    let a = n.ns_v4.to_string();
    let (pid1, r1) = p.run_pid(&["connect", "tcp", &a, "8080"]);
    assert_eq!(r1, "ok", "audit mode blocks nothing");
    let (pid2, r2) = p.run_pid(&["connect", "tcp", &a, "8081"]);
    assert_eq!(r2, "err ECONNREFUSED", "audit mode blocks nothing");
    let events = fx.sbx.events(&fx.cg);
    let rule = "deny private (--deny)";
    let (d1, d2) = (format!("{a}:8080"), format!("{a}:8081"));
    assert_event(one_event_of(&events, pid1), &fx.cg, pid1, "connect4", "tcp", &d1, "audit", rule);
    assert_event(one_event_of(&events, pid2), &fx.cg, pid2, "connect4", "tcp", &d2, "audit", rule);
    // The egress backstop sees the SYNs that audit mode let through and
    // reports them too, without a process (pid 0, cgroup id 0).
    for e in events.iter().filter(|e| e["pid"] != pid1 && e["pid"] != pid2) {
        assert_eq!(e["hook"], "egress", "only the backstop may add events: {e:#}");
        assert_eq!(e["verdict"], "audit", "{e:#}");
        assert_eq!(e["rule"], rule, "{e:#}");
        assert!(e["destination"] == d1.as_str() || e["destination"] == d2.as_str(), "{e:#}");
    }

    // The same policy without --audit enforces, in place.
    let out = fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--deny", "private"]);
    assert!(stdout(&out).contains("updated policy of"), "{}", describe(&out));
    assert_eq!(fx.sbx.status(&fx.cg)["policy"]["mode"], "enforce");
    let (pid3, r3) = p.run_pid(&["connect", "tcp", &a, "8080"]);
    assert_eq!(r3, "err EPERM");
    let events = fx.sbx.events(&fx.cg);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(&events[0], &fx.cg, pid3, "connect4", "tcp", &format!("{a}:8080"), "denied", rule);
}

/// `verify --cgroup CG --json`: exit status and `(name, result)` pairs.
fn verify(sbx: &Sbx, cg: &TestCgroup) -> (Option<i32>, Vec<(String, String)>, Output) {
    let out = sbx.output(&["verify", "--cgroup", cg.arg(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}): {}", describe(&out)));
    let checks = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v:#}"))
        .iter()
        .map(|c| (c["name"].as_str().expect("name").to_owned(), c["result"].as_str().expect("result").to_owned()))
        .collect();
    (out.status.code(), checks, out)
}

#[test]
fn verify_passes_when_enforcing_and_fails_after_detach_and_in_audit_mode() {
    let sbx = Sbx::new();
    let cg = TestCgroup::new();
    // Loopback open, so the allowed-connect probe runs too.
    sbx.attach(&cg, &["--deny", "private", "--loopback", "any"]);
    let (code, checks, out) = verify(&sbx, &cg);
    assert_eq!(code, Some(0), "{}", describe(&out));
    for hook in sbx_tests::all_hooks() {
        assert!(checks.iter().any(|(n, _)| *n == format!("{hook} attached")), "no check of {hook}: {checks:?}");
    }
    assert!(checks.iter().any(|(n, _)| n.starts_with("denied tcp connect")), "{checks:?}");
    assert!(checks.iter().any(|(n, _)| n == "allowed tcp connect"), "{checks:?}");
    let not_passed: Vec<_> = checks.iter().filter(|(_, r)| r != "pass").collect();
    assert!(not_passed.is_empty(), "every check passes: {}", describe(&out));
    // The text form says PASS on every line, then that it enforces.
    let out = sbx.ok(&["verify", "--cgroup", cg.arg()]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), checks.len() + 1, "{text}");
    assert!(lines[..checks.len()].iter().all(|l| l.starts_with("PASS ")), "{text}");
    assert_eq!(lines[checks.len()], format!("{} is enforcing", cg.arg()), "{text}");

    sbx.detach(&cg);
    let (code, checks, out) = verify(&sbx, &cg);
    assert_eq!(code, Some(1), "verify must fail (a verdict, 1) on a detached cgroup: {}", describe(&out));
    for hook in sbx_tests::all_hooks() {
        assert!(checks.contains(&(format!("{hook} attached"), "fail".to_owned())), "{}", describe(&out));
    }
    assert!(checks.contains(&("denied tcp connect (connect4)".to_owned(), "fail".to_owned())), "{}", describe(&out));
    assert!(stderr(&out).contains("checks failed"), "{}", describe(&out));

    sbx.attach(&cg, &["--audit", "--deny", "private", "--loopback", "any"]);
    let (code, checks, out) = verify(&sbx, &cg);
    assert_eq!(code, Some(1), "verify must fail (a verdict, 1) in audit mode: {}", describe(&out));
    assert!(checks.contains(&("mode".to_owned(), "fail".to_owned())), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit mode"), "{}", describe(&out));
}

/// The iteration lines `N RESULT_A RESULT_B` the `alternate` loop has
/// completed so far (after its `pid` line).
fn iterations(log: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().skip(1).filter(|l| !l.starts_with("done ")).map(str::to_owned).collect()
}

fn wait_for_iterations(log: &Path, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while iterations(log).len() < n {
        assert!(Instant::now() < deadline, "the connect loop stalled {what}: {} iterations", iterations(log).len());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// A allowed, B denied.
    Policy1,
    /// A denied, B allowed.
    Policy2,
    /// Both allowed: A judged under policy 1, B under policy 2, which only
    /// an update from 1 to 2 between the two connects can do.
    Switch12,
    /// Both denied: the same for an update from 2 to 1.
    Switch21,
}

/// `seen` as runs, e.g. `Policy1 x120, Switch12 x1, Policy2 x80`.
fn runs(seen: &[Seen]) -> String {
    let mut out: Vec<(Seen, usize)> = Vec::new();
    for s in seen {
        match out.last_mut() {
            Some((last, n)) if last == s => *n += 1,
            _ => out.push((*s, 1)),
        }
    }
    out.iter().map(|(s, n)| format!("{s:?} x{n}")).collect::<Vec<_>>().join(", ")
}

#[test]
fn update_under_load_switches_atomically_without_restarting_anything() {
    // UDP connects: judged by connect4 like TCP ones, but nothing is sent,
    // so the loop measures verdicts only and runs as fast as they come.
    update_under_load("udp", 6, 300);
}

#[test]
fn update_under_tcp_load_judges_each_connection_by_one_policy() {
    // Real TCP connections to two test hosts while the policy flips 20
    // times: every connect is allowed or refused (EPERM) by one policy,
    // none hangs because the egress backstop judged its SYN under the
    // other one.
    update_under_load("tcp", 20, 100);
}

fn update_under_load(proto: &str, updates: usize, settle: usize) {
    const PORT: u16 = 8080;
    let (updates_n, settle_n) = (updates, settle);
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(PORT);
    let (a, b) = (n.ns_v4.to_string(), n.ns_v4b.to_string());
    let policy = |which: usize| if which == 1 { format!("{a}:{PORT}") } else { format!("{b}:{PORT}") };
    fx.attach(&["--allow", &policy(1)]);
    let log = n.dir().join(format!("alternate-{proto}.log"));
    let stop = n.dir().join(format!("alternate-{proto}.stop"));
    let mut cmd = Command::new(fx.probe.bin());
    cmd.args(["alternate", &a, &b, &PORT.to_string(), stop.to_str().expect("UTF-8"), proto]);
    let bg = Background::spawn_logged("sbx-probe alternate", &mut cmd, fx.inside().place(), &log);
    wait_for_iterations(&log, settle_n, "before the first update");

    // (completed before `update` started, completed when it returned,
    // from, to).
    let mut windows = Vec::new();
    for i in 0..updates_n {
        let (from, to) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
        let before = iterations(&log).len();
        let out = fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--allow", &policy(to)]);
        assert!(stdout(&out).contains("updated policy of"), "{}", describe(&out));
        let after = iterations(&log).len();
        windows.push((before, after, from, to));
        wait_for_iterations(&log, after + settle_n, &format!("after update {i}"));
    }
    let stat = fs::read_to_string(format!("/proc/{}/stat", bg.pid())).expect("the loop is still there");
    assert!(!stat.contains(") Z "), "the loop exited during the updates: {stat}");
    fs::write(&stop, "").expect("creating the stop file");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&log).unwrap_or_default().contains("\ndone ") {
        assert!(Instant::now() < deadline, "the loop did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = fs::read_to_string(&log).expect("reading the loop's output");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(format!("pid {}", bg.pid()).as_str()), "one process from start to end");
    let all: Vec<&str> = lines.collect();
    let (done, iters) = all.split_last().expect("a done line");
    assert_eq!(*done, format!("done {}", iters.len()), "the loop ran without interruption");

    let seen: Vec<Seen> = iters
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "line {l:?}");
            assert_eq!(f[0], i.to_string(), "iterations are numbered without gaps");
            match (f[1], f[2]) {
                ("ok", "EPERM") => Seen::Policy1,
                ("EPERM", "ok") => Seen::Policy2,
                ("ok", "ok") => Seen::Switch12,
                ("EPERM", "EPERM") => Seen::Switch21,
                _ => panic!("{proto} iteration {i}: results {l:?}; only ok and EPERM may appear"),
            }
        })
        .collect();
    let steady = |which: usize| if which == 1 { Seen::Policy1 } else { Seen::Policy2 };
    let mut next = 0;
    for &(before, after, from, to) in &windows {
        // Completed before the update started: the old policy.
        for (i, s) in seen.iter().enumerate().take(before).skip(next) {
            assert_eq!(*s, steady(from), "iteration {i}, before update {from}->{to} started");
        }
        // While it ran (the iteration in progress when it returned
        // included): the old policy, at most one iteration straddling
        // the switch, then the new policy: one switch, never back.
        let during = &seen[before..=after.min(seen.len() - 1)];
        let straddle = if from == 1 { Seen::Switch12 } else { Seen::Switch21 };
        let switched = during.iter().position(|s| *s != steady(from)).unwrap_or(during.len());
        let rest = &during[switched..];
        let rest = rest.strip_prefix(&[straddle]).unwrap_or(rest);
        assert!(
            rest.iter().all(|s| *s == steady(to)),
            "update {from}->{to}: iterations {before}..={after} were {}, not one switch",
            runs(during)
        );
        next = after + 1;
    }
    // After the last update returned: the last policy.
    let last = windows.last().expect("updates ran").3;
    for (i, s) in seen.iter().enumerate().skip(next) {
        assert_eq!(*s, steady(last), "iteration {i}, after the last update");
    }
    let straddles = seen.iter().filter(|s| matches!(s, Seen::Switch12 | Seen::Switch21)).count();
    eprintln!("{proto}: {} iterations, {updates_n} updates, {straddles} iterations straddled a switch", seen.len());
}

#[test]
fn events_name_the_deciding_rule_of_a_policy_with_100_000_rules() {
    // The rule an event names is what `compile` recorded for the entry the
    // kernel matched (one lookup), here among 100,000 rules of a file,
    // with its line.
    use std::fmt::Write as _;
    let fx = Fixture::new(probe!());
    let net = &fx.net;
    let dir = TempDir::new("many-rules");
    let mut toml = String::from("[network]\ndefault = \"deny\"\nallow = [\n");
    for i in 0..100_000_u32 {
        let _ = writeln!(toml, "  \"11.{}.{}.{}:443\",", i >> 16, (i >> 8) & 255, i & 255);
    }
    let [o1, o2, o3, _] = net.ns_v4.octets();
    // Lines 4 to 100,003 hold the generated rules.
    let _ = writeln!(toml, "  \"udp://{o1}.{o2}.{o3}.0/24:8080\",\n]\ndeny = [\n  \"tcp://{}:8080\",\n]", net.ns_v4b);
    let path = dir.path().join("many.toml");
    fs::write(&path, toml).expect("write the policy");
    let path = path.to_str().expect("UTF-8");
    fx.attach(&["--policy", path, "--max-rules", "200000"]);
    let inside = fx.inside();
    let (deny_pid, got) = inside.run_pid(&["connect", "tcp", &net.ns_v4b.to_string(), "8080"]);
    assert_eq!(got, "err EPERM");
    let (default_pid, got) = inside.run_pid(&["connect", "tcp", &net.ns_v4.to_string(), "8080"]);
    assert_eq!(got, "err EPERM");
    let (udp_pid, got) = inside.run_pid(&["sendto", &net.ns_v6.to_string(), "8080"]);
    assert_eq!(got, "err EPERM");
    assert_eq!(inside.sendto(net.ns_v4, 8080, "x"), "ok", "the /24 allows UDP");
    let events = fx.sbx.events(&fx.cg);
    assert_eq!(events.len(), 3, "{events:#?}");
    let ns_v4b = format!("{}:8080", net.ns_v4b);
    let denied = format!("deny tcp://{}:8080 ({path}:100007)", net.ns_v4b);
    assert_event(one_event_of(&events, deny_pid), &fx.cg, deny_pid, "connect4", "tcp", &ns_v4b, "denied", &denied);
    let ns_v4 = format!("{}:8080", net.ns_v4);
    let e = one_event_of(&events, default_pid);
    assert_event(e, &fx.cg, default_pid, "connect4", "tcp", &ns_v4, "denied", "default deny");
    let ns_v6 = format!("[{}]:8080", net.ns_v6);
    assert_event(one_event_of(&events, udp_pid), &fx.cg, udp_pid, "sendmsg6", "udp", &ns_v6, "denied", "default deny");
    fx.sbx.detach(&fx.cg);
}

#[test]
fn status_events_update_and_detach_work_from_fresh_processes_after_attach_exits() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    // Each `sbx-user` call below is a new process; `attach` has exited
    // by the time `ok` returns, and nothing of it is running.
    let attach = fx.sbx.attach(&fx.cg, &["--allow", &format!("{}:8080", n.ns_v4)]);
    assert!(attach.status.success());
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["by"], "attach", "{e:#}");
    assert!(e["runner_pid"].is_null(), "no process owns an attached sandbox: {e:#}");
    assert!(e["problem"].is_null(), "{e:#}");
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    let (pid, r) = p.run_pid(&["connect", "tcp", &n.ns_v4b.to_string(), "8080"]);
    assert_eq!(r, "err EPERM");
    let events = fx.sbx.events(&fx.cg);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(&events[0], &fx.cg, pid, "connect4", "tcp", &format!("{}:8080", n.ns_v4b), "denied", "default deny");
    assert_eq!(counter(&fx.sbx.status(&fx.cg), "connect4"), (1, 1));

    fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--allow", &format!("{}:8080", n.ns_v4b)]);
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["rules"][0]["text"], format!("{}:8080", n.ns_v4b), "{e:#}");

    fx.sbx.detach(&fx.cg);
    assert!(!Sbx::has_pins(fx.cg.id()));
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    let out = fx.sbx.fails(&["update", "--cgroup", fx.cg.arg(), "--default", "deny"]);
    assert!(stderr(&out).contains("not attached"), "{}", describe(&out));
}

/// The `nets` of the first rule in a status entry.
fn rule_nets(entry: &serde_json::Value) -> Vec<String> {
    let rule = &entry["policy"]["rules"][0];
    rule["nets"]
        .as_array()
        .unwrap_or_else(|| panic!("no nets: {entry:#}"))
        .iter()
        .map(|n| n.as_str().expect("a CIDR").to_owned())
        .collect()
}

#[test]
fn pinned_domains_resolve_once_and_do_not_follow_the_name_until_update() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    n.serve_tcp(8081);
    let host = HostsEntry::new(IpAddr::V4(n.ns_v4));
    let rule = format!("{}:8080", host.name());
    fx.attach(&["--allow", &rule]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok", "the resolved address and port");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8081), "err EPERM", "another port");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM", "another address");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["rules"][0]["host"], host.name(), "{e:#}");
    assert_eq!(e["policy"]["rules"][0]["text"], rule.as_str(), "{e:#}");
    assert_eq!(rule_nets(&e), [format!("{}/32", n.ns_v4)], "{e:#}");

    // The name moves; the sandbox keeps the address it pinned.
    host.point_at(IpAddr::V4(n.ns_v4b));
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM", "no rebinding to the new address");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok", "the pinned address still works");
    assert_eq!(rule_nets(&fx.sbx.status(&fx.cg)), [format!("{}/32", n.ns_v4)]);

    // `update` resolves again.
    fx.sbx.ok(&["update", "--cgroup", fx.cg.arg(), "--allow", &rule]);
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["rules"][0]["host"], host.name(), "{e:#}");
    assert_eq!(rule_nets(&e), [format!("{}/32", n.ns_v4b)], "{e:#}");

    // A name in a deny rule is refused, and explained.
    for cmd in ["attach", "update"] {
        let mut args = vec![cmd, "--cgroup", fx.cg.arg(), "--deny", host.name()];
        if cmd == "attach" {
            args.push("--replace");
        }
        let out = fx.sbx.fails(&args);
        let err = stderr(&out);
        assert!(err.contains("deny rules cannot name hosts") && err.contains(host.name()), "{}", describe(&out));
        assert!(err.contains("fails open"), "the message says why: {}", describe(&out));
    }
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "ok", "the refused policies changed nothing");
}
