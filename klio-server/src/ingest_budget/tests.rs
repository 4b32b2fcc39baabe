//! The budget's accounting: cover is taken, given back and never leaks; the floor needs no
//! pool; the share holds while others wait; windows follow the connections.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const MIB: usize = 1 << 20;

#[test]
fn the_floor_needs_nothing_from_the_pool() {
    let budget = IngestBudget::new(MIB as u64);
    let mut s = budget.session();
    assert!(s.try_cover(FLOOR));
    assert_eq!(s.held(), 0);
    assert_eq!(budget.available(), MIB);
    assert!(s.try_cover(FLOOR + 1000));
    assert_eq!(s.held(), 1000);
    assert_eq!(budget.available(), MIB - 1000);
}

#[test]
fn cover_comes_back_when_shrunk_and_when_the_session_ends() {
    let budget = IngestBudget::new(4 * MIB as u64);
    let mut s = budget.session();
    assert!(s.try_cover(FLOOR + 3 * MIB));
    assert_eq!(budget.available(), MIB);
    // Another session cannot have more than what is left.
    let mut other = budget.session();
    assert!(!other.try_cover(FLOOR + 2 * MIB));
    assert!(other.try_cover(FLOOR + MIB));
    assert_eq!(budget.available(), 0);
    s.shrink_to(FLOOR + MIB);
    assert_eq!(budget.available(), 2 * MIB);
    drop(s);
    drop(other);
    assert_eq!(budget.available(), 4 * MIB);
    assert_eq!(budget.sessions(), 0);
}

#[test]
fn a_request_larger_than_the_pool_takes_the_pool_and_no_more() {
    let budget = IngestBudget::new(MIB as u64);
    let mut s = budget.session();
    assert!(s.try_cover(FLOOR + 8 * MIB));
    assert_eq!(s.held(), MIB);
    assert_eq!(budget.available(), 0);
}

#[tokio::test]
async fn a_waiting_session_gets_its_cover_once_another_gives_it_back() {
    let budget = IngestBudget::new(2 * MIB as u64);
    let mut big = budget.session();
    assert!(big.try_cover(FLOOR + 2 * MIB));
    let waiter = tokio::spawn({
        let budget = budget.clone();
        async move {
            let mut s = budget.session();
            s.cover(FLOOR + MIB).await;
            s.held()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "covered while the pool was empty");
    big.shrink_to(FLOOR + MIB);
    let held = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is covered once the pool has room")
        .unwrap();
    assert_eq!(held, MIB);
    drop(big);
    assert_eq!(budget.available(), MIB + MIB);
}

#[tokio::test]
async fn a_wait_given_up_takes_nothing() {
    let budget = IngestBudget::new(2 * MIB as u64);
    let mut big = budget.session();
    assert!(big.try_cover(FLOOR + 2 * MIB));
    let mut s = budget.session();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), s.cover(FLOOR + MIB)).await;
    assert!(gave_up.is_err());
    assert_eq!(s.held(), 0);
    drop(big);
    assert_eq!(budget.available(), 2 * MIB, "a cancelled wait kept permits");
    assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn while_a_session_waits_the_others_do_not_grow_ahead_of_it() {
    let budget = IngestBudget::new(8 * MIB as u64);
    let mut a = budget.session();
    let mut b = budget.session();
    // Two sessions: a share is 4 MiB of the pool.
    assert!(a.try_cover(FLOOR + 3 * MIB));
    assert!(b.try_cover(FLOOR + 4 * MIB));
    let waiter = tokio::spawn({
        let budget = budget.clone();
        async move {
            let mut c = budget.session();
            c.cover(FLOOR + 2 * MIB).await;
            c
        }
    });
    while budget.waiting.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The pool's last MiB goes to `c`, first in line; `a` (at more than its share, 8 MiB / 3)
    // does not take it, nor anything else while `c` waits.
    assert!(!a.try_cover(FLOOR + 4 * MIB));
    assert!(!a.try_cover(FLOOR + 3 * MIB + 1024));
    assert_eq!(a.held(), 3 * MIB);
    b.shrink_to(0);
    let c = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is covered")
        .unwrap();
    assert_eq!(c.held(), 2 * MIB);
}

#[test]
fn windows_are_the_budget_shared_by_the_connections_within_bounds() {
    let budget = IngestBudget::new(256 * MIB as u64);
    let mut first = budget.connection();
    assert_eq!(first.current(), MAX_WINDOW);
    let more: Vec<_> = (0..63).map(|_| budget.connection()).collect();
    assert_eq!(first.current(), 4 * MIB as u64);
    let crowd: Vec<_> = (0..1000).map(|_| budget.connection()).collect();
    assert_eq!(first.current(), MIN_WINDOW);
    drop(crowd);
    drop(more);
    assert_eq!(first.current(), MAX_WINDOW);
}

#[tokio::test]
async fn a_window_hears_when_connections_come_and_go() {
    let budget = IngestBudget::new(32 * MIB as u64);
    let mut first = budget.connection();
    assert_eq!(first.current(), 16 * MIB as u64);
    let second = budget.connection();
    let w = tokio::time::timeout(Duration::from_secs(10), first.changed())
        .await
        .expect("told of the new connection");
    assert_eq!(w, 16 * MIB as u64);
    let third = budget.connection();
    let w = tokio::time::timeout(Duration::from_secs(10), first.changed())
        .await
        .expect("told of the new connection");
    assert_eq!(w, (32 * MIB / 3) as u64);
    drop((second, third));
    let w = tokio::time::timeout(Duration::from_secs(10), first.changed())
        .await
        .expect("told of the connections gone");
    assert_eq!(w, 16 * MIB as u64);
}

/// What a session does with its cover.
#[derive(Clone, Debug)]
enum Op {
    /// Reads ahead to this many bytes, if covered now.
    TryCover(usize, usize),
    /// A batch was stored: keeps this many.
    Shrink(usize, usize),
    /// The session ends and another one starts in its place.
    Restart(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let session = 0usize..4;
    let bytes = 0usize..(3 * MIB);
    prop_oneof![
        4 => (session.clone(), bytes.clone()).prop_map(|(s, b)| Op::TryCover(s, b)),
        3 => (session.clone(), bytes).prop_map(|(s, b)| Op::Shrink(s, b)),
        1 => session.prop_map(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the sizes and order, the pool never hands out more than it has, each session
    /// holds exactly what its reads beyond the floor need (clamped to the pool), and once
    /// every session ended the whole pool is back.
    #[test]
    fn the_pool_balances(ops in prop::collection::vec(op(), 1..200), total in 1usize..(4 * MIB)) {
        let budget = IngestBudget::new(total as u64);
        let mut sessions: Vec<SessionBudget> = (0..4).map(|_| budget.session()).collect();
        for op in ops {
            match op {
                Op::TryCover(s, bytes) => {
                    let before = sessions[s].held();
                    let covered = sessions[s].try_cover(bytes);
                    let need = bytes.saturating_sub(FLOOR).min(total);
                    if covered {
                        prop_assert!(sessions[s].held() >= need);
                    } else {
                        prop_assert_eq!(sessions[s].held(), before);
                    }
                }
                Op::Shrink(s, bytes) => {
                    let before = sessions[s].held();
                    sessions[s].shrink_to(bytes);
                    let need = bytes.saturating_sub(FLOOR).min(total);
                    prop_assert_eq!(sessions[s].held(), before.min(need));
                }
                Op::Restart(s) => sessions[s] = budget.session(),
            }
            let held: usize = sessions.iter().map(SessionBudget::held).sum();
            prop_assert_eq!(held + budget.available(), total, "permits leaked or doubled");
        }
        prop_assert_eq!(budget.sessions(), 4);
        drop(sessions);
        prop_assert_eq!(budget.available(), total);
        prop_assert_eq!(budget.sessions(), 0);
    }
}

#[test]
fn a_budget_is_shared_by_reference() {
    let budget = IngestBudget::new(MIB as u64);
    let again = Arc::clone(&budget);
    let _s = again.session();
    assert_eq!(budget.sessions(), 1);
    assert_eq!(budget.total(), MIB);
}
