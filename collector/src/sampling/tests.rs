use super::*;

#[test]
fn the_decision_cache_forgets_the_oldest_decision_of_each_kind() {
    let mut cache = DecisionCache {
        capacity: 2,
        ..DecisionCache::default()
    };
    let id = |n: u8| [n; 16];
    cache.insert(id(1), true);
    cache.insert(id(2), false);
    cache.insert(id(3), true);
    cache.insert(id(4), false);
    assert_eq!(cache.get(&id(1)), Some(true));
    cache.insert(id(5), true);
    // Sampled: 1 went, 3 and 5 stay; not sampled: 2 and 4 stay.
    assert_eq!(cache.get(&id(1)), None);
    assert_eq!(cache.get(&id(3)), Some(true));
    assert_eq!(cache.get(&id(5)), Some(true));
    assert_eq!(cache.get(&id(2)), Some(false));
    cache.insert(id(6), false);
    assert_eq!(cache.get(&id(2)), None);
    assert_eq!(cache.get(&id(4)), Some(false));
    assert_eq!(cache.decisions.len(), 4);
}

#[test]
fn a_cache_of_size_zero_remembers_nothing() {
    let mut cache = DecisionCache::default();
    cache.insert([1; 16], true);
    assert_eq!(cache.get(&[1; 16]), None);
}

#[test]
fn decisions_are_counted_per_policy_and_cached() {
    let yaml = "policies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n  - {name: big, type: span_count, span_count: {min_spans: 2}}\n";
    let engine = Engine::from_yaml(yaml).unwrap();
    let sampler = Sampler::new(engine, SamplerConfig::default());
    let span = |t: u8| Span {
        trace_id: vec![t; 16],
        span_id: vec![1; 8],
        ..Span::default()
    };
    assert!(sampler.judge(&[1; 16], &[span(1), span(1)], false, 0));
    assert!(!sampler.judge(&[2; 16], &[span(2)], false, 0));
    // Evicted before a decision: dropped, not decided.
    assert!(!sampler.judge(&[3; 16], &[span(3), span(3)], true, 0));
    let s = sampler.stats();
    assert_eq!(s.decided(Some(1), Decision::Sampled), 1);
    assert_eq!(s.decided(Some(0), Decision::Sampled), 0);
    assert_eq!(s.decided(None, Decision::NotSampled), 1);
    assert_eq!(s.pending_limit_traces.load(Ordering::Relaxed), 1);
    assert_eq!(s.pending_limit_spans.load(Ordering::Relaxed), 2);
    // A later fragment follows the cached decision, even a big one.
    assert!(!sampler.judge(&[2; 16], &[span(2), span(2), span(2)], false, 0));
    assert_eq!(s.late_not_sampled_spans.load(Ordering::Relaxed), 3);
    assert!(sampler.judge(&[1; 16], &[span(1)], false, 0));
    assert_eq!(s.late_sampled_spans.load(Ordering::Relaxed), 1);
    assert_eq!(sampler.cached(&[3; 16]), None);
}
