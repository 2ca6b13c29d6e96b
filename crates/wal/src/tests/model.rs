//! Model test: random sequences of append / update / remove / dead-letter / replay / flush /
//! reopen against an in-memory model of what the WAL must hold. Kept small so the suite stays
//! fast; regressions are committed under `proptest-regressions/`.

use std::collections::{BTreeMap, HashSet, VecDeque};

use proptest::prelude::*;
use proptest::sample::Index;
use tempfile::TempDir;

use super::support::{config, reason, receipt, record, store_data_bytes, ScriptedSync};
use crate::{
    Appended, DeadKind, DeadLetter, DeadReason, Entry, Key, Receipt, Record, Wal, WalConfig,
    PRIORITY_CRITICAL, PRIORITY_NORMAL,
};

const DEDUP_WINDOW: usize = 4;
const DELIVERED_KEEP: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// (alert id 0..10, critical?, straight to dead letters?)
    Append(Vec<(u8, bool, bool)>),
    Update(Index, u32),
    Remove(Index),
    DeadLetter(Index),
    Replay(Index),
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..10, any::<bool>(), prop::bool::weighted(0.15)), 0..4)
            .prop_map(Op::Append),
        1 => (any::<Index>(), 1u32..5).prop_map(|(i, n)| Op::Update(i, n)),
        2 => any::<Index>().prop_map(Op::Remove),
        1 => any::<Index>().prop_map(Op::DeadLetter),
        1 => any::<Index>().prop_map(Op::Replay),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    pending: BTreeMap<Key, Record>,
    dead: BTreeMap<u64, DeadLetter>,
    window: VecDeque<String>,
    delivered: VecDeque<Receipt>,
    max_seq: u64,
    max_dead_id: u64,
    now_ms: u64,
}

impl Model {
    fn remember(&mut self, alert_id: &str) {
        self.window.push_back(alert_id.to_owned());
        while self.window.len() > DEDUP_WINDOW {
            self.window.pop_front();
        }
    }

    fn new_seq(&mut self, key: Key) {
        assert!(
            key.seq > self.max_seq,
            "seq {} not above {}",
            key.seq,
            self.max_seq
        );
        self.max_seq = key.seq;
    }

    fn new_dead_id(&mut self, id: u64) {
        assert!(
            id > self.max_dead_id,
            "dead id {id} not above {}",
            self.max_dead_id
        );
        self.max_dead_id = id;
    }

    fn pending_key(&self, i: &Index) -> Option<Key> {
        (!self.pending.is_empty()).then(|| {
            *self
                .pending
                .keys()
                .nth(i.index(self.pending.len()))
                .unwrap()
        })
    }
}

fn cfg(dir: &TempDir) -> WalConfig {
    WalConfig {
        dedup_window: DEDUP_WINDOW,
        delivered_keep: DELIVERED_KEEP,
        ..config(dir.path())
    }
}

fn open(dir: &TempDir) -> Wal {
    Wal::open_with_sync(cfg(dir), Box::new(ScriptedSync::never_failing())).expect("open")
}

fn apply(wal: &Wal, model: &mut Model, op: Op) {
    model.now_ms += 1;
    match op {
        Op::Append(spec) => {
            let entries: Vec<Entry> = spec
                .iter()
                .map(|&(id, critical, dead)| {
                    let priority = if critical {
                        PRIORITY_CRITICAL
                    } else {
                        PRIORITY_NORMAL
                    };
                    let mut rec = record(&format!("alert-{id}"), priority);
                    rec.received_at_ms = model.now_ms;
                    if dead {
                        Entry::DeadLetter(rec, reason(DeadKind::Malformed))
                    } else {
                        Entry::Pending(rec)
                    }
                })
                .collect();
            let out = wal
                .append_batch(entries.clone())
                .expect("append")
                .into_inner();
            assert_eq!(out.len(), entries.len());
            let mut seen = HashSet::new();
            for (entry, appended) in entries.into_iter().zip(out) {
                let alert_id = entry.record().alert_id.clone();
                let duplicate = !seen.insert(alert_id.clone()) || model.window.contains(&alert_id);
                match (entry, appended) {
                    (_, Appended::Duplicate { alert_id: got }) => {
                        assert!(duplicate, "{got} wrongly reported as a duplicate");
                        assert_eq!(got, alert_id);
                        continue;
                    }
                    (Entry::Pending(rec), Appended::Pending(key)) => {
                        assert!(!duplicate, "duplicate {alert_id} was written");
                        assert_eq!(key.priority, rec.priority);
                        model.new_seq(key);
                        model.pending.insert(key, rec);
                    }
                    (Entry::DeadLetter(rec, why), Appended::DeadLettered(id)) => {
                        assert!(!duplicate, "duplicate {alert_id} was written");
                        model.new_dead_id(id);
                        let dead_at_ms = rec.received_at_ms;
                        model.dead.insert(
                            id,
                            DeadLetter {
                                id,
                                key: None,
                                record: Some(rec),
                                raw: None,
                                reason: why,
                                dead_at_ms,
                            },
                        );
                    }
                    (entry, appended) => panic!("{entry:?} gave {appended:?}"),
                }
                model.remember(&alert_id);
            }
        }
        Op::Update(i, attempts) => {
            if let Some(key) = model.pending_key(&i) {
                let mut rec = model.pending[&key].clone();
                rec.attempts = attempts;
                rec.last_attempt_ms = Some(model.now_ms);
                rec.next_attempt_ms = model.now_ms + 100;
                let new = wal.update(key, &rec).expect("update");
                assert_eq!(new.priority, key.priority, "an update keeps the lane");
                model.new_seq(new);
                model.pending.remove(&key);
                model.pending.insert(new, rec);
            }
        }
        Op::Remove(i) => {
            if let Some(key) = model.pending_key(&i) {
                let rec = model.pending.remove(&key).unwrap();
                let r = receipt(&rec, key);
                wal.remove(key, r.clone()).expect("remove");
                model.delivered.push_back(r);
                while model.delivered.len() > DELIVERED_KEEP {
                    model.delivered.pop_front();
                }
            }
        }
        Op::DeadLetter(i) => {
            if let Some(key) = model.pending_key(&i) {
                let rec = model.pending.remove(&key).unwrap();
                let why = DeadReason {
                    message: format!("gave up at {}", model.now_ms),
                    ..reason(DeadKind::Exhausted)
                };
                let id = wal
                    .dead_letter(key, why.clone(), model.now_ms)
                    .expect("dead_letter");
                model.new_dead_id(id);
                model.dead.insert(
                    id,
                    DeadLetter {
                        id,
                        key: Some(key),
                        record: Some(rec),
                        raw: None,
                        reason: why,
                        dead_at_ms: model.now_ms,
                    },
                );
            }
        }
        Op::Replay(i) => {
            if !model.dead.is_empty() {
                let id = *model.dead.keys().nth(i.index(model.dead.len())).unwrap();
                let dead = model.dead.remove(&id).unwrap();
                let key = wal.replay(id).expect("replay");
                model.new_seq(key);
                let mut rec = dead.record.unwrap();
                rec.attempts = 0;
                rec.first_attempt_ms = None;
                rec.last_attempt_ms = None;
                rec.next_attempt_ms = 0;
                rec.last_error = None;
                assert_eq!(key.priority, rec.priority);
                model.pending.insert(key, rec);
            }
        }
        Op::Flush => wal.flush().expect("flush"),
        Op::Reopen => unreachable!("handled by the caller"),
    }
}

fn check(wal: &Wal, model: &Model) {
    let pending: Vec<(Key, Record)> = wal.pending().map(|r| r.expect("decodable")).collect();
    let expected: Vec<(Key, Record)> = model.pending.iter().map(|(k, r)| (*k, r.clone())).collect();
    assert_eq!(pending, expected, "pending differs from the model");
    let dead: Vec<DeadLetter> = wal.dead_letters().map(|r| r.expect("decodable")).collect();
    assert_eq!(
        dead,
        model.dead.values().cloned().collect::<Vec<_>>(),
        "dead letters differ"
    );
    let delivered: Vec<Receipt> = wal.delivered().map(|r| r.expect("decodable")).collect();
    assert_eq!(
        delivered,
        model.delivered.iter().cloned().collect::<Vec<_>>(),
        "receipts differ"
    );
    let stats = wal.stats().expect("stats");
    assert_eq!(stats.pending, model.pending.len() as u64);
    assert_eq!(
        stats.pending_critical,
        model
            .pending
            .keys()
            .filter(|k| k.priority == PRIORITY_CRITICAL)
            .count() as u64
    );
    assert_eq!(stats.dead_letters, model.dead.len() as u64);
    assert_eq!(stats.delivered_kept, model.delivered.len() as u64);
    assert_eq!(stats.data_bytes, store_data_bytes(wal), "data_bytes differ");
    assert_eq!(wal.data_bytes(), stats.data_bytes);
    wal.assert_counters_consistent();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_the_model_through_random_operations_and_reopens(
        ops in proptest::collection::vec(op(), 1..30)
    ) {
        let dir = TempDir::new().unwrap();
        let mut wal = open(&dir);
        let mut model = Model::default();
        for op in ops {
            if let Op::Reopen = op {
                drop(wal);
                wal = open(&dir);
            } else {
                apply(&wal, &mut model, op);
            }
            check(&wal, &model);
        }
    }
}
