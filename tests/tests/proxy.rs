//! Proxy-only mode with real tools: a web server (python3 -m http.server)
//! in the test namespace, tinyproxy on loopback outside the sandbox, curl
//! inside it.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    process::{Command, Output},
};

use sbx_tests::{
    describe, free_port, probe, wait_tcp, Background, Fixture, Place,
    Proto::{Tcp, Udp},
    TempDir, TestCgroup,
};
// A dependency of the fixture crate this test file does not use directly.
use sbx_user as _;
use serde_json as _;

/// tinyproxy started by `sbx-user run POLICY... -- tinyproxy`, stopped
/// with SIGTERM so `run` tears its sandbox down.
struct SandboxedProxy {
    tinyproxy: Background,
    cg: TestCgroup,
    /// Holds tinyproxy.conf outside /tmp, which its sandbox sees private.
    _conf_dir: TempDir,
}

impl Drop for SandboxedProxy {
    fn drop(&mut self) {
        let pid = self.tinyproxy.pid();
        // SAFETY: kill(2) on our own child, by pid; it is not reaped
        // before `Background` drops, so the pid cannot be reused.
        unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap_or(0), libc::SIGTERM) };
        // Until `run` has finished its teardown and exited (a zombie now):
        // its private HOME and /tmp go last, after the cgroup.
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The policy for a sandboxed tinyproxy, from its port and the test net.
type ProxyPolicy<'a> = &'a dyn Fn(u16, &sbx_tests::TestNet) -> Vec<String>;

/// A web server in the namespace and tinyproxy on loopback.
struct Proxied {
    fx: Fixture,
    /// `http://<ns_v4>:8000/hello.txt`.
    url: String,
    /// The file's content.
    body: String,
    proxy_port: u16,
    proxy_log: std::path::PathBuf,
    _tinyproxy: Option<Background>,
    sandboxed: Option<SandboxedProxy>,
}

impl Proxied {
    fn new() -> Self {
        Self::build(None)
    }

    /// As [`Self::new`], with tinyproxy itself under `sbx-user run` and
    /// the policy `policy(proxy_port, test net)` returns.
    fn sandboxed(policy: ProxyPolicy<'_>) -> Self {
        Self::build(Some(policy))
    }

    fn build(sandbox: Option<ProxyPolicy<'_>>) -> Self {
        let fx = Fixture::new(probe!());
        let n = &fx.net;
        let www = n.dir().join("www");
        fs::create_dir(&www).expect("creating the web root");
        let body = format!("hello from {}\n", n.name());
        fs::write(www.join("hello.txt"), &body).expect("writing the page");
        let mut http = Command::new("python3");
        http.args(["-m", "http.server", "--bind", &n.ns_v4.to_string(), "--directory"]).arg(&www).arg("8000");
        let _ = n.spawn("python3 -m http.server", &mut http);
        wait_tcp(SocketAddr::new(n.ns_v4.into(), 8000));

        let proxy_port = free_port();
        let conf_dir = TempDir::new_in(std::path::Path::new("/var/tmp"), "tinyproxy");
        let conf = conf_dir.path().join("tinyproxy.conf");
        fs::write(
            &conf,
            format!("Port {proxy_port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\nMaxClients 20\nLogLevel Info\n"),
        )
        .expect("writing tinyproxy.conf");
        let proxy_log = n.dir().join("tinyproxy.log");
        let (tinyproxy, sandboxed) = if let Some(policy) = sandbox {
            let cg = TestCgroup::new();
            let mut tp = fx.sbx.cmd();
            tp.args(["run", "--cgroup-parent", cg.arg()])
                .args(policy(proxy_port, n))
                .args(["--", "tinyproxy", "-d", "-c"])
                .arg(&conf);
            let tinyproxy =
                Background::spawn_logged("sbx-user run -- tinyproxy", &mut tp, &Place::default(), &proxy_log);
            (None, Some(SandboxedProxy { tinyproxy, cg, _conf_dir: conf_dir }))
        } else {
            let mut tp = Command::new("tinyproxy");
            tp.arg("-d").arg("-c").arg(&conf);
            (Some(Background::spawn_logged("tinyproxy", &mut tp, &Place::default(), &proxy_log)), None)
        };
        wait_tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), proxy_port));
        let url = format!("http://{}:8000/hello.txt", n.ns_v4);
        Self { fx, url, body, proxy_port, proxy_log, _tinyproxy: tinyproxy, sandboxed }
    }

    fn proxy(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }

    /// `sbx-user run --cgroup-parent CG --proxy 127.0.0.1:N -- CMD...`.
    fn run(&self, command: &[&str]) -> Output {
        self.run_with(&[], command)
    }

    /// As [`Self::run`], with extra sbx-user options before `--`.
    fn run_with(&self, options: &[&str], command: &[&str]) -> Output {
        let mut cmd = self.fx.sbx.cmd();
        cmd.args(["run", "--cgroup-parent", self.fx.cg.arg(), "--proxy", &self.proxy()])
            .args(options)
            .arg("--")
            .args(command);
        // The test's own environment must not decide whether curl proxies.
        for v in
            ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"]
        {
            cmd.env_remove(v);
        }
        cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }
}

#[test]
fn curl_through_the_proxy_works_and_direct_is_denied() {
    let px = Proxied::new();
    // HTTP_PROXY/http_proxy are exported by run; curl follows them.
    let out = px.run(&["curl", "-sS", "-m", "5", &px.url]);
    assert_eq!(out.status.code(), Some(0), "curl through the proxy: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), px.body);
    let log = fs::read_to_string(&px.proxy_log).unwrap_or_default();
    assert!(log.contains(&px.url), "tinyproxy did not see the request:\n{log}");

    // Bypassing the proxy: connect(2) fails with EPERM, curl exits 7.
    let out = px.run(&["curl", "-v", "-sS", "-m", "5", "--noproxy", "*", &px.url]);
    assert_eq!(out.status.code(), Some(7), "curl --noproxy: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{}", describe(&out));
    assert!(out.stdout.is_empty());

    // The same without a sandbox works, so the denial was the policy's.
    let direct = Command::new("curl").args(["-sS", "-m", "5", "--noproxy", "*", &px.url]).output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&direct.stdout), px.body, "{}", describe(&direct));
    assert_eq!(px.fx.cg.children(), Vec::<std::path::PathBuf>::new(), "run cleaned up");
}

#[test]
fn proxy_mode_exports_the_proxy_and_opens_only_its_loopback_port() {
    let px = Proxied::new();
    let out = px.run(&["env"]);
    let env = String::from_utf8_lossy(&out.stdout);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        let want = format!("{var}=http://{}", px.proxy());
        assert!(env.lines().any(|l| l == want), "{want} missing from:\n{env}");
    }
    // Loopback is the policy's to decide, never the proxy's.
    for var in ["NO_PROXY", "no_proxy"] {
        let want = format!("{var}=localhost,127.0.0.1,::1,127.0.0.0/8");
        assert!(env.lines().any(|l| l == want), "{want} missing from:\n{env}");
    }

    // Another loopback service, outside the sandbox.
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    let other_port = other.local_addr().expect("address").port().to_string();
    let p = px.fx.probe.arg();
    let n = &px.fx.net;
    let script = format!(
        "{p} connect tcp 127.0.0.1 {proxy}; {p} connect tcp 127.0.0.1 {other_port}; \
         {p} connect tcp ::1 {proxy}; {p} connect tcp ::1 {other_port}; \
         {p} connect tcp {ns} 8000; {p} sendto {ns} 53",
        proxy = px.proxy_port,
        ns = n.ns_v4
    );
    let out = px.run(&["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        // The proxy port on ::1 is allowed too, but nothing listens there.
        "ok\nerr EPERM\nerr ECONNREFUSED\nerr EPERM\nerr EPERM\nerr EPERM\n",
        "{}",
        describe(&out)
    );
    // The other service is reachable from outside the sandbox.
    assert_eq!(px.fx.outside().connect(Tcp, "127.0.0.1", other.local_addr().expect("address").port()), "ok");
}

#[test]
fn proxy_on_another_host_is_allowed_for_tcp_only_and_closes_loopback() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(3128);
    n.serve_tcp(8080);
    let lo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    let lo_port = lo.local_addr().expect("address").port();
    fx.attach(&["--proxy", &format!("{}:3128", n.ns_v4)]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, n.ns_v4, 3128), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM");
    assert_eq!(p.connect(Udp, n.ns_v4, 3128), "err EPERM", "the proxy rule is tcp:// only");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 3128), "err EPERM");
    assert_eq!(p.connect(Tcp, "127.0.0.1", lo_port), "err EPERM", "loopback defaults to none");
    let e = fx.sbx.status(&fx.cg);
    assert_eq!(e["policy"]["proxy"], format!("{}:3128", n.ns_v4), "{e:#}");
    assert_eq!(e["policy"]["default"], "deny", "{e:#}");
}

#[test]
fn agent_profile_allows_loopback_and_denies_private_networks() {
    let fx = Fixture::new(probe!());
    let n = &fx.net;
    n.serve_tcp(8080);
    let lo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    let lo_port = lo.local_addr().expect("address").port();
    fx.attach(&["--profile", "agent"]);
    let p = fx.inside();
    assert_eq!(p.connect(Tcp, "127.0.0.1", lo_port), "ok", "loopback = any");
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "err EPERM", "10/8 is private");
    assert_eq!(p.connect(Tcp, n.ns_v6, 8080), "err EPERM", "fd00::/8 is private");
    // An allow rule for one private host:port beats the profile's
    // `private` deny: the longer prefix decides.
    fx.sbx.ok(&[
        "attach",
        "--replace",
        "--cgroup",
        fx.cg.arg(),
        "--profile",
        "agent",
        "--allow",
        &format!("{}:8080", n.ns_v4),
    ]);
    assert_eq!(p.connect(Tcp, n.ns_v4, 8080), "ok");
    assert_eq!(p.connect(Tcp, n.ns_v4b, 8080), "err EPERM");
}

#[test]
fn transparent_redirect_sends_a_proxy_ignoring_client_through_the_proxy() {
    let px = Proxied::new();
    // curl --noproxy '*' ignores every proxy variable and connects to the
    // web server directly; the connect hook rewrites it to tinyproxy, which
    // routes the origin-form request by its Host header.
    let out =
        px.run_with(&["--proxy-redirect", "--log-denials"], &["curl", "-sS", "-m", "5", "--noproxy", "*", &px.url]);
    assert_eq!(out.status.code(), Some(0), "redirected curl: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), px.body);
    let log = fs::read_to_string(&px.proxy_log).unwrap_or_default();
    assert!(log.contains(&format!("{}:8000", px.fx.net.ns_v4)), "tinyproxy did not carry the request:\n{log}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("proxied") && stderr.contains(&format!("{}:8000", px.fx.net.ns_v4)),
        "the redirect is reported as an event: {}",
        describe(&out)
    );

    // UDP is never redirected: a denied sendto stays EPERM.
    let out = px.run_with(&["--proxy-redirect"], &[px.fx.probe.arg(), "sendto", &px.fx.net.ns_v4.to_string(), "53"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "err EPERM\n", "{}", describe(&out));
}

#[test]
fn orig_dst_reports_the_address_the_client_asked_for() {
    let px = Proxied::new();
    let fx = &px.fx;
    fx.attach(&["--proxy", &px.proxy(), "--proxy-redirect"]);
    // A client inside the sandbox connects "directly" and reports its port.
    let py = format!(
        "import socket; s=socket.create_connection(('{ns}', 8000)); print(s.getsockname()[1], flush=True); s.close()",
        ns = fx.net.ns_v4
    );
    let place = sbx_tests::Place { cgroup: Some(fx.cg.path().to_owned()), netns: None };
    let out = place.output(Command::new("python3").args(["-c", &py]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let port = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = fx.sbx.cmd().args(["orig-dst", "--cgroup", fx.cg.arg(), "--port", &port]).output().expect("orig-dst");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{}:8000", fx.net.ns_v4), "{}", describe(&out));
    let out = fx.sbx.cmd().args(["orig-dst", "--cgroup", fx.cg.arg(), "--port", "1"]).output().expect("orig-dst");
    assert_ne!(out.status.code(), Some(0), "an unknown port is an error: {}", describe(&out));
}

/// A minimal HTTP server on 127.0.0.1 outside any sandbox (a host service
/// the policy keeps from the sandbox); answers every request with `body`.
fn loopback_http(body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read as _, Write as _};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    let port = listener.local_addr().expect("address").port();
    let thread = std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten().take(16) {
            // The whole request head first: tinyproxy writes it in pieces.
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    (port, thread)
}

#[test]
fn loopback_goes_direct_and_a_proxy_under_its_own_policy_is_no_deputy() {
    let (lo_port, _lo) = loopback_http("host loopback service\n");
    let lo_url = format!("http://127.0.0.1:{lo_port}/");

    // A stock tinyproxy is a deputy: the agent sandbox (proxy-only,
    // loopback only to the proxy) asks it for the denied test host, in
    // plain HTTP and by CONNECT, and for a host loopback service.
    let px = Proxied::new();
    let out = px.run(&["curl", "-sS", "-m", "5", &px.url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), px.body, "the stock proxy carries it: {}", describe(&out));
    let out = px.run(&["curl", "-sS", "-m", "5", "-p", &px.url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), px.body, "CONNECT through the stock proxy: {}", describe(&out));
    let out = px.run(&["curl", "-sS", "-m", "5", "--noproxy", "", "-x", &format!("http://{}", px.proxy()), &lo_url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "host loopback service\n", "{}", describe(&out));
    // NO_PROXY keeps a well-behaved client off that path: it connects
    // directly, and the policy refuses.
    let out = px.run(&["curl", "-v", "-sS", "-m", "5", &lo_url]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{}", describe(&out));
    drop(px);

    // The composition that closes it without trusting the proxy's
    // configuration: tinyproxy runs under `run --profile open` (private
    // and metadata denied; the test hosts are in 10/8), with loopback only
    // to its own port, so it can listen and be reached but not be a
    // deputy for other loopback services.
    let px = Proxied::sandboxed(&|port, _| {
        ["--profile", "open", "--loopback", &port.to_string()].map(str::to_owned).to_vec()
    });
    let out = px.run(&["curl", "-sS", "-m", "5", "-p", &px.url]);
    assert_ne!(out.status.code(), Some(0), "CONNECT to the denied host must fail: {}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let out = px.run(&["curl", "-sS", "-f", "-m", "5", &px.url]);
    assert_ne!(out.status.code(), Some(0), "plain HTTP to the denied host must fail: {}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&px.body), "{}", describe(&out));
    let out =
        px.run(&["curl", "-sS", "-f", "-m", "5", "--noproxy", "", "-x", &format!("http://{}", px.proxy()), &lo_url]);
    assert_ne!(out.status.code(), Some(0), "the host loopback service through the proxy: {}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("host loopback service"), "{}", describe(&out));
    // tinyproxy was asked and could not connect; the kernel refused it, by
    // the proxy's own policy (its sandbox's deny events say which rule).
    let log = fs::read_to_string(&px.proxy_log).unwrap_or_default();
    let ns = px.fx.net.ns_v4;
    for target in [format!("{ns}:8000"), format!("127.0.0.1:{lo_port}")] {
        assert!(
            log.contains(&format!("Could not establish a connection to {target}")),
            "{target}: tinyproxy's log:\n{log}"
        );
    }
    let sandboxed = px.sandboxed.as_ref().expect("a sandboxed proxy");
    let run_cg = sandboxed.cg.children();
    assert_eq!(run_cg.len(), 1, "the proxy's run cgroup: {run_cg:?}");
    let out = px.fx.sbx.ok(&["events", "--cgroup", run_cg[0].to_str().expect("UTF-8"), "--json"]);
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    let denied = |dest: &str| {
        events.lines().any(|l| l.contains(&format!("\"destination\":\"{dest}\"")) && l.contains("\"denied\""))
    };
    assert!(denied(&format!("{ns}:8000")), "the proxy's connect to the private host is a deny event:\n{events}");
    assert!(denied(&format!("127.0.0.1:{lo_port}")), "and its connect to the loopback service:\n{events}");
}
