//! The wire format, the answers, and the generated files.

use super::*;
use crate::policy::{parse_toml, PolicyBuilder};

/// A query for `name` (dotted, as given: case is kept) of `qtype`.
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [id, 0x0100, 1, 0, 0, u16::from(edns)] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(u8::try_from(label.len()).expect("short label"));
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&CLASS_IN.to_be_bytes());
    if edns {
        p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    p
}

/// A parsed reply: (id, flags, answers as addresses, additional count).
fn parse_reply(r: &[u8], question_len: usize) -> (u16, u16, Vec<IpAddr>, u16) {
    let id = be16(r, 0).expect("id");
    let flags = be16(r, 2).expect("flags");
    let an = be16(r, 6).expect("an");
    let ar = be16(r, 10).expect("ar");
    let mut at = 12 + question_len;
    let mut addrs = Vec::new();
    for _ in 0..an {
        assert_eq!(&r[at..at + 2], &[0xc0, 0x0c], "name pointer");
        let rtype = be16(r, at + 2).expect("type");
        assert_eq!(be16(r, at + 4), Some(CLASS_IN));
        let len = usize::from(be16(r, at + 10).expect("rdlength"));
        let data = &r[at + 12..at + 12 + len];
        addrs.push(match rtype {
            TYPE_A => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).expect("4 bytes"))),
            TYPE_AAAA => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).expect("16 bytes"))),
            t => panic!("unexpected type {t}"),
        });
        at += 12 + len;
    }
    (id, flags, addrs, ar)
}

fn names() -> Names {
    let src = "[network]\nallow = [\"tcp://GitHub.com:443\", \"github.com:22\", \"v6.example\", \"gone.example\"]\n";
    let layer = parse_toml(src, "t.toml").expect("parses");
    let resolve = |host: &str| -> std::io::Result<Vec<IpAddr>> {
        match host {
            "github.com" => Ok(vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()]),
            "v6.example" => Ok(vec!["2001:db8::6".parse().unwrap()]),
            _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no")),
        }
    };
    Names::of(&PolicyBuilder::new().apply(layer).build_with(&resolve, true).expect("builds"))
}

fn ask(name: &str, qtype: u16) -> (u16, Vec<IpAddr>, Option<Refusal>) {
    let q = query(0xbeef, name, qtype, false);
    let (r, refusal) = answer(&names(), &q, UDP_PLAIN_MAX).expect("a reply");
    let (id, flags, addrs, _) = parse_reply(&r, q.len() - 12);
    assert_eq!(id, 0xbeef);
    assert_eq!(flags & 0x8000, 0x8000, "QR");
    assert_eq!(flags & 0x0100, 0x0100, "RD echoed");
    assert_eq!(&r[12..q.len()], &q[12..], "question echoed as sent");
    (flags & 0xf, addrs, refusal)
}

#[test]
fn pinned_names_get_their_pinned_addresses() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(ask("github.com", TYPE_A), (0, vec![ip("192.0.2.10")], None));
    // Any letter case (0x20 randomisation), with or without the root dot.
    assert_eq!(ask("GitHub.COM.", TYPE_AAAA), (0, vec![ip("2001:db8::10")], None));
    assert_eq!(ask("github.com", TYPE_ANY), (0, vec![ip("192.0.2.10"), ip("2001:db8::10")], None));
    // The name exists, the type does not: NOERROR, no answer (NODATA).
    assert_eq!(ask("v6.example", TYPE_A), (0, vec![], None));
    assert_eq!(ask("github.com", 65), (0, vec![], None));
    assert_eq!(ask("localhost", TYPE_A), (0, vec![ip("127.0.0.1")], None));
    assert_eq!(ask("app.localhost", TYPE_AAAA), (0, vec![ip("::1")], None));
}

#[test]
fn other_names_fail_at_once_with_a_reason() {
    for (name, qtype, rcode, reason, shown) in [
        ("other.example", TYPE_A, RCODE_NXDOMAIN, NOT_PINNED, "other.example"),
        ("secret-data.evil.example", 16, RCODE_NXDOMAIN, NOT_PINNED, "secret-data.evil.example"),
        ("sub.github.com", TYPE_A, RCODE_NXDOMAIN, NOT_PINNED, "sub.github.com"),
        ("github.com.evil", TYPE_A, RCODE_NXDOMAIN, NOT_PINNED, "github.com.evil"),
        ("gone.example", TYPE_A, RCODE_NXDOMAIN, UNRESOLVED, "gone.example"),
        ("", 2, RCODE_NXDOMAIN, NOT_PINNED, "."),
    ] {
        let (got, addrs, refusal) = ask(name, qtype);
        assert_eq!((got, addrs), (rcode, vec![]), "{name}");
        assert_eq!(refusal, Some(Refusal { name: shown.to_owned(), qtype, reason }), "{name}");
    }
}

#[test]
fn odd_bytes_in_a_label_never_match_a_pinned_name() {
    // "github.com" as one label with a dot inside.
    let mut q = query(1, "x", TYPE_A, false);
    q.truncate(12);
    q.push(10);
    q.extend_from_slice(b"github.com");
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let (r, refusal) = answer(&names(), &q, UDP_PLAIN_MAX).expect("reply");
    assert_eq!(be16(&r, 2).unwrap() & 0xf, RCODE_NXDOMAIN);
    assert_eq!(refusal.expect("refused").name, "github\\046com");
}

#[test]
fn malformed_packets() {
    let n = names();
    // Too short, or a response: no reply at all.
    assert!(answer(&n, &[], 512).is_none());
    assert!(answer(&n, &[0; 11], 512).is_none());
    let mut response = query(7, "github.com", TYPE_A, false);
    response[2] |= 0x80;
    assert!(answer(&n, &response, 512).is_none());
    let rcode = |p: &[u8]| {
        let (r, refusal) = answer(&n, p, 512).expect("a reply");
        assert_eq!(refusal.is_some(), be16(&r, 2).unwrap() & 0xf == RCODE_NXDOMAIN, "only refusals are reported");
        assert_eq!(be16(&r, 0), be16(p, 0), "id");
        (be16(&r, 2).unwrap() & 0xf, be16(&r, 4).unwrap())
    };
    // Another opcode (NOTIFY, UPDATE): NOTIMP.
    let mut update = query(7, "github.com", TYPE_A, false);
    update[2] |= 5 << 3;
    assert_eq!(rcode(&update), (RCODE_NOTIMP, 0));
    // Two questions, an answer section, a compression pointer, a label of
    // 64 bytes, a name longer than 255, a truncated question: FORMERR.
    let mut two = query(7, "github.com", TYPE_A, false);
    two[5] = 2;
    assert_eq!(rcode(&two), (RCODE_FORMERR, 0));
    let mut with_answer = query(7, "github.com", TYPE_A, false);
    with_answer[7] = 1;
    assert_eq!(rcode(&with_answer), (RCODE_FORMERR, 0));
    let mut pointer = query(7, "x", TYPE_A, false);
    pointer.truncate(12);
    pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    assert_eq!(rcode(&pointer), (RCODE_FORMERR, 0));
    let long_label = "a".repeat(64);
    assert_eq!(rcode(&query(7, &long_label, TYPE_A, false)), (RCODE_FORMERR, 0));
    let long_name = ["a".repeat(63), "a".repeat(63), "a".repeat(63), "a".repeat(63)].join(".");
    assert_eq!(rcode(&query(7, &long_name, TYPE_A, false)), (RCODE_FORMERR, 0));
    let ok_name = ["a".repeat(63), "a".repeat(63), "a".repeat(63), "a".repeat(61)].join(".");
    assert_eq!(rcode(&query(7, &ok_name, TYPE_A, false)), (RCODE_NXDOMAIN, 1), "253 characters is a name");
    let q = query(7, "github.com", TYPE_A, false);
    for cut in 12..q.len() {
        assert_eq!(rcode(&q[..cut]), (RCODE_FORMERR, 0), "cut at {cut}");
    }
    // Class CH (version.bind): REFUSED, reported.
    let mut chaos = query(7, "version.bind", 16, false);
    let last = chaos.len() - 1;
    chaos[last] = 3;
    let (r, refusal) = answer(&n, &chaos, 512).expect("reply");
    assert_eq!(be16(&r, 2).unwrap() & 0xf, RCODE_REFUSED);
    assert_eq!(refusal.expect("reported").reason, NOT_IN);
}

#[test]
fn no_input_panics() {
    // Every prefix and every single-byte change of a few queries.
    let n = names();
    for q in [query(1, "github.com", TYPE_A, true), query(2, "a.b.c", TYPE_AAAA, false)] {
        for cut in 0..=q.len() {
            let _ = answer(&n, &q[..cut], 512);
        }
        for i in 0..q.len() {
            for b in [0u8, 1, 0x3f, 0x40, 0xc0, 0xff] {
                let mut m = q.clone();
                m[i] = b;
                let _ = answer(&n, &m, 512);
            }
        }
    }
}

#[test]
fn edns_and_truncation() {
    let many: Vec<String> = (1..=40).map(|i| format!("10.0.0.{i}")).collect();
    let layer = parse_toml("[network]\nallow = [\"big.example:443\"]\n", "t.toml").expect("parses");
    let addrs = many.clone();
    let resolve =
        move |_: &str| -> std::io::Result<Vec<IpAddr>> { Ok(addrs.iter().map(|a| a.parse().unwrap()).collect()) };
    let n = Names::of(&PolicyBuilder::new().apply(layer).build_with(&resolve, false).expect("builds"));
    // 40 A records are 640 bytes: too big for 512, fine for EDNS's 1232.
    let q = query(3, "big.example", TYPE_A, false);
    let (r, _) = answer(&n, &q, udp_limit(&q)).expect("reply");
    let (_, flags, addrs, ar) = parse_reply(&r, q.len() - 12);
    assert!(r.len() <= UDP_PLAIN_MAX);
    assert_eq!((flags & 0x0200, addrs.len(), ar), (0x0200, 0, 0), "truncated: the client retries over TCP");
    let (r, _) = answer(&n, &q, 65_535).expect("reply over TCP");
    assert_eq!(parse_reply(&r, q.len() - 12).2.len(), 40);
    let q = query(4, "big.example", TYPE_A, true);
    assert_eq!(udp_limit(&q), usize::from(UDP_EDNS_MAX));
    let (r, _) = answer(&n, &q, udp_limit(&q)).expect("reply");
    let question_len = q.len() - 12 - 11;
    let (_, flags, addrs, ar) = parse_reply(&r, question_len);
    assert_eq!((flags & 0x0200, addrs.len(), ar), (0, 40, 1));
    assert_eq!(&r[r.len() - 11..], &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0], "OPT with 1232");
}

#[test]
fn generated_files() {
    let n = names();
    let files = ResolverFiles::new(
        Ipv4Addr::new(127, 53, 1, 2),
        &n,
        Some("127.0.0.1 localhost\n# a comment\n10.1.1.1 GitHub.com alias.example # note\n10.2.2.2 github.com.\n\n::1 localhost ip6-localhost\n"),
        Some("passwd: files\nhosts:          files mdns4_minimal [NOTFOUND=return] resolve dns myhostname\nhosts: dns\nnetworks: files\n"),
    );
    assert!(files.resolv_conf.contains("\nnameserver 127.53.1.2\n"), "{}", files.resolv_conf);
    assert!(!files.resolv_conf.contains("search"), "{}", files.resolv_conf);
    assert_eq!(
        files.hosts.as_deref().expect("hosts"),
        "# sbx-user run: the host's /etc/hosts without the pinned names, which sbx's DNS stub answers.\n\
         127.0.0.1 localhost\n# a comment\n10.1.1.1\talias.example # note\n\n::1 localhost ip6-localhost\n"
    );
    assert_eq!(
        files.nsswitch.as_deref().expect("nsswitch"),
        "passwd: files\n# sbx-user run (dns = \"pinned\"): /etc/hosts, then sbx's stub\nhosts:          files dns\nnetworks: files\n"
    );
    assert!(nsswitch_hosts("passwd: files\n").ends_with("\nhosts:          files dns\n"));
    let none = ResolverFiles::new(Ipv4Addr::new(127, 53, 0, 1), &n, None, None);
    assert_eq!((none.hosts, none.nsswitch), (None, None));
}

#[test]
fn stub_addresses_are_in_127_53() {
    for seed in [0, 1, 65_533, 65_534, u32::MAX] {
        for i in 0..64 {
            let a = candidate(seed, i);
            let [a0, a1, hi, lo] = a.octets();
            assert_eq!((a0, a1), (127, 53), "{a}");
            assert_ne!((hi, lo), (0, 0), "{a}");
            assert_ne!((hi, lo), (255, 255), "{a}");
        }
    }
}

#[test]
fn the_limiter_reports_a_name_once_per_two_seconds_and_at_most_100_a_second() {
    let mut l = Limiter::default();
    let t0 = Instant::now();
    assert_eq!(l.admit("a.example", t0), Some(0));
    assert_eq!(l.admit("a.example", t0 + Duration::from_millis(10)), None, "AAAA right after A");
    assert_eq!(l.admit("a.example", t0 + Duration::from_secs(3)), Some(0));
    let t1 = t0 + Duration::from_secs(10);
    let admitted = (0..150).filter(|i| l.admit(&format!("n{i}.example"), t1).is_some()).count();
    assert_eq!(admitted, 100);
    assert_eq!(l.admit("late.example", t1 + Duration::from_secs(1)), Some(50), "the suppressed are counted");
}
