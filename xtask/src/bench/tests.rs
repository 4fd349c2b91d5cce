//! Unit tests of the pure parts.

use super::{
    policies::{gen_rules, size_label},
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
