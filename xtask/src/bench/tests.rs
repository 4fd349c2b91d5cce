//! Unit tests of the pure parts.

use super::{
    policies::{gen_rules, overlaps_bench_net, size_label},
    stats::{median, min, thousands},
};

#[test]
fn rules_are_distinct_and_avoid_loopback() {
    let (allow, deny) = gen_rules(5_000, 7);
    assert_eq!(allow.len() + deny.len(), 5_000);
    for r in allow.iter().chain(&deny) {
        let target = r.split_once("://").map_or(r.as_str(), |(_, t)| t).trim_start_matches('[');
        assert!(!target.starts_with("127.") && !target.starts_with("0."), "{r}");
        assert!(!target.starts_with("2002:"), "{r}");
        if let Some((addr, len)) = target.split(':').next().and_then(|t| t.split_once('/')) {
            if let Ok(a) = addr.parse::<std::net::Ipv4Addr>() {
                assert!(!overlaps_bench_net(u32::from(a), len.parse().expect("a prefix length")), "{r}");
            }
        }
    }
    assert_eq!(gen_rules(100, 1), gen_rules(100, 1));
}

#[test]
fn median_and_min() {
    assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
    assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
    assert!((min(&[4.0, 1.0]) - 1.0).abs() < f64::EPSILON);
}

#[test]
fn labels() {
    assert_eq!(size_label(10), "10");
    assert_eq!(size_label(1_000), "1k");
    assert_eq!(size_label(100_000), "100k");
    assert_eq!(size_label(1_000_000), "1M");
    assert_eq!(thousands(1_234_567.4), "1,234,567");
}

#[test]
fn bench_net_overlap() {
    let a = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().expect("an address"));
    assert!(overlaps_bench_net(a("198.0.0.0"), 8));
    assert!(overlaps_bench_net(a("198.16.0.0"), 12));
    assert!(overlaps_bench_net(a("198.19.4.0"), 24));
    assert!(overlaps_bench_net(a("198.18.0.2"), 32));
    assert!(!overlaps_bench_net(a("198.20.0.0"), 14));
    assert!(!overlaps_bench_net(a("198.17.255.0"), 24));
    assert!(!overlaps_bench_net(a("10.0.0.0"), 8));
}

#[test]
fn only_program_sets_no_sandbox_names_are_removed() {
    let dir = std::env::temp_dir().join(format!("sbx-bench-sets-{}", std::process::id()));
    let root = dir.join("sbx");
    for d in ["123/set-aaaa", "456", "set-aaaa/prog_x", "set-bbbb/prog_x", "tmp-set-cccc-1"] {
        std::fs::create_dir_all(root.join(d)).expect("creating the test tree");
    }
    let done = super::sbx::remove_unused_sets(&dir).expect("removing unused sets");
    assert_eq!(done.removed, vec!["bbbb".to_owned()]);
    assert_eq!(done.in_use, vec!["aaaa".to_owned()]);
    assert!(root.join("set-aaaa/prog_x").is_dir(), "the set a sandbox names stays");
    assert!(!root.join("set-bbbb").exists());
    assert!(root.join("123/set-aaaa").is_dir() && root.join("tmp-set-cccc-1").is_dir(), "nothing else is touched");
    // No bpffs at all: nothing to do.
    let none = super::sbx::remove_unused_sets(&dir.join("missing")).expect("a missing bpffs is fine");
    assert!(none.removed.is_empty() && none.in_use.is_empty());
    std::fs::remove_dir_all(&dir).expect("cleaning up");
}
