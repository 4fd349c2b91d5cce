//! Property tests of what the agent parses from clients that are not root:
//! the request decoder and the policy parser behind it, on random bytes,
//! random JSON and mutations of valid requests, for a time budget
//! (`SBX_FUZZ_SECS`, default 2 s) so that every `cargo test` (and CI) runs
//! them. The properties: nothing panics; a decoded request encodes back to
//! the same request; a policy either builds or is an error. Host names in
//! random rules are resolved by a resolver that answers nothing, so the
//! harness never touches the network.

use std::time::{Duration, Instant};

use super::protocol::{decode, encode_request, Request};
use crate::policy::{parse_toml, FlagInput, PolicyBuilder};

/// xorshift64*: deterministic per seed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).expect("fits")
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEEDS: &[&str] = &[
    r#"{"v":1,"op":"hello"}"#,
    r#"{"v":1,"id":7,"op":"list"}"#,
    r#"{"v":1,"op":"attach","cgroup":"a/b","create":true,"policy":{"profile":"offline","allow":["10.0.0.1:80,443"]}}"#,
    r#"{"v":1,"op":"update","cgroup":"/x","policy":{"toml":"[network]\ndefault='allow'\ndeny=['private']","max_rules":64}}"#,
    r#"{"v":1,"op":"detach","cgroup":"x","remove":true}"#,
    r#"{"v":1,"op":"status","cgroup":"x"}"#,
    r#"{"v":1,"op":"run","policy":{"proxy":"127.0.0.1:3128","loopback":"3128","bind":"any","audit":true}}"#,
    r#"{"v":1,"op":"run","trace":true,"dns_stub":"127.53.0.9","policy":{"profile":"agent"}}"#,
    r#"{"v":1,"op":"enter","cgroup":"run-1-2"}"#,
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "1",
    "-1",
    "1e999",
    "0.5",
    "\"v\"",
    "\"op\"",
    "\"policy\"",
    "\"toml\"",
    "\"allow\"",
    "\"cgroup\"",
    "\"id\"",
    "\n",
    "\u{feff}",
    "\u{10ffff}",
    "[[[[[[[[[[[[[[[[",
    "\"attach\"",
    "\"run\"",
    "9999999999999999999999",
];

const RULES: &[&str] = &[
    "10.0.0.1",
    "10.0.0.0/8:80",
    "[::1]:443",
    "udp://1.2.3.4:53",
    "tcp://0.0.0.0/0:1-65535",
    ":25",
    "private",
    "metadata",
    "any",
    "example.invalid:443",
    "300.1.1.1",
    "[fe80::1%eth0]:1",
    "::ffff:1.2.3.4/120",
    "1.2.3.4:0",
    "1.2.3.4:65536",
    "1.2.3.4:80-79",
    "",
    ",",
    "*",
    "1.2.3.4:*",
    "[2001:db8::/129]",
    "a..b",
    "\u{0}",
];

const TOML: &[&str] = &[
    "[network]\n",
    "default = \"deny\"\n",
    "default = \"allow\"\n",
    "loopback = \"none\"\n",
    "loopback = [3128, \"8000-8100\"]\n",
    "proxy = \"127.0.0.1:3128\"\n",
    "proxy_mode = \"redirect\"\n",
    "bind = \"any\"\n",
    "bind = [\"0.0.0.0:8080\"]\n",
    "mode = \"audit\"\n",
    "allow = [\"10.1.2.3:5432\"]\n",
    "deny = [\"private\", \":25\"]\n",
    "x = 1\n",
    "[[network]]\n",
    "allow = 5\n",
    "= = =\n",
    "\"\n",
    "[network.deep]\n",
    "loopback = [99999]\n",
];

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let n = rng.below(bytes.len());
                bytes.truncate(n);
            }
            2 => {
                let i = rng.below(bytes.len() + 1);
                let t = rng.pick(TOKENS).as_bytes().to_vec();
                bytes.splice(i..i, t);
            }
            3 if bytes.len() > 1 => {
                let (a, b) = (rng.below(bytes.len()), rng.below(bytes.len()));
                let (lo, hi) = (a.min(b), a.max(b));
                bytes.drain(lo..hi);
            }
            4 => bytes.push(u8::try_from(rng.below(256)).expect("a byte")),
            _ => {
                let seed = rng.pick(SEEDS).as_bytes();
                let i = rng.below(bytes.len() + 1);
                bytes.splice(i..i, seed.iter().copied());
            }
        }
    }
    bytes
}

fn budget() -> Duration {
    let secs = std::env::var("SBX_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0_f64);
    Duration::from_secs_f64(secs.clamp(0.01, 3600.0))
}

fn seed() -> u64 {
    std::env::var("SBX_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x05ee_d5b8_u64) | 1
}

#[test]
fn the_request_decoder_never_panics_and_round_trips() {
    let mut rng = Rng(seed());
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget() || runs < 1000 {
        let input = match rng.below(3) {
            0 => (0..rng.below(64)).map(|_| u8::try_from(rng.below(256)).expect("a byte")).collect(),
            1 => (0..rng.below(24)).map(|_| rng.pick(TOKENS)).collect::<String>().into_bytes(),
            _ => {
                let seed = rng.pick(SEEDS).as_bytes().to_vec();
                mutate(&mut rng, seed)
            }
        };
        if let Ok(env) = decode(&input) {
            let again = decode(&encode_request(&env.request)).unwrap_or_else(|e| {
                panic!("{:?} decoded, but its encoding does not: {e}", String::from_utf8_lossy(&input))
            });
            assert_eq!(again.request, env.request, "{}", String::from_utf8_lossy(&input));
        }
        runs += 1;
    }
    eprintln!("request decoder: {runs} inputs in {:?}", start.elapsed());
}

#[test]
fn the_policy_parser_behind_the_agent_never_panics() {
    let mut rng = Rng(seed() ^ 0xabcd);
    let start = Instant::now();
    let nothing = |_: &str| -> std::io::Result<Vec<std::net::IpAddr>> { Ok(Vec::new()) };
    let mut runs = 0u64;
    while start.elapsed() < budget() || runs < 1000 {
        let mut text: String = (0..rng.below(8)).map(|_| rng.pick(TOML)).collect();
        if rng.below(2) == 0 {
            text = String::from_utf8_lossy(&mutate(&mut rng, text.into_bytes())).into_owned();
        }
        let flags = FlagInput {
            allow: (0..rng.below(4)).map(|_| rng.pick(RULES).to_owned()).collect(),
            deny: (0..rng.below(3)).map(|_| rng.pick(RULES).to_owned()).collect(),
            default: (rng.below(3) == 0).then(|| rng.pick(&["deny", "allow", "maybe", ""]).to_owned()),
            loopback: (rng.below(3) == 0).then(|| rng.pick(&["any", "none", "3128", "1-2,x", "99999"]).to_owned()),
            proxy: (rng.below(4) == 0).then(|| rng.pick(&["127.0.0.1:3128", "[::1]:1", "x", ":0"]).to_owned()),
            bind: (rng.below(4) == 0).then(|| rng.pick(&["loopback", "any", "0.0.0.0:80", "?"]).to_owned()),
            audit: rng.below(2) == 0,
            proxy_redirect: rng.below(4) == 0,
            allow_unresolved: rng.below(2) == 0,
            ..FlagInput::default()
        };
        let mut b = PolicyBuilder::new();
        if let Ok(layer) = parse_toml(&text, "fuzz") {
            b.apply(layer);
        }
        if let Ok(layer) = flags.to_layer() {
            b.apply(layer);
        }
        let _ = b.build_with(&nothing, flags.allow_unresolved);
        // And the same through a request, as the agent decodes it.
        let req =
            serde_json::json!({"v": 1, "op": "attach", "cgroup": "x", "policy": {"toml": text, "allow": flags.allow}});
        let decoded = decode(req.to_string().as_bytes()).expect("a valid request");
        assert!(matches!(decoded.request, Request::Attach { .. }));
        runs += 1;
    }
    eprintln!("policy parser: {runs} inputs in {:?}", start.elapsed());
}
