//! Properties of the VRAM ledger: exact accounting under random sequences of
//! reservations, releases and budget changes, alone and from several threads.

use std::sync::Arc;

use gogrid_agent::policy::ledger::{Device, Ledger, Refusal, Reservation, Use};
use proptest::prelude::*;

const DEVICES: [Device; 2] = [Device::Gpu(0), Device::Gpu(1)];

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        device: usize,
        bytes: u64,
        what: Use,
    },
    Release {
        pick: usize,
    },
    SetBudget {
        device: usize,
        bytes: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let what = prop_oneof![Just(Use::Weights), Just(Use::Activations)];
    prop_oneof![
        4 => (0..2usize, 0..120u64, what)
            .prop_map(|(device, bytes, what)| Op::Reserve { device, bytes, what }),
        3 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (0..2usize, -10..300i64).prop_map(|(device, bytes)| Op::SetBudget { device, bytes }),
    ]
}

fn live_bytes(live: &[Reservation], device: Device) -> i64 {
    live.iter()
        .filter(|r| r.device() == device)
        .map(|r| i64::try_from(r.bytes()).expect("small"))
        .sum()
}

fn assert_matches_live(ledger: &Ledger, live: &[Reservation]) {
    for device in DEVICES {
        let u = ledger.usage(device).expect("known device");
        assert_eq!(u.used, live_bytes(live, device), "{device}");
        assert_eq!(u.weights + u.activations, u.used, "{device}");
    }
}

proptest! {
    #[test]
    fn used_is_always_the_sum_of_live_reservations_and_a_reservation_fits_its_budget(
        budgets in (0..300i64, 0..300i64),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let ledger = Arc::new(Ledger::new([(DEVICES[0], budgets.0), (DEVICES[1], budgets.1)]));
        let mut budget = [budgets.0, budgets.1];
        let mut live: Vec<Reservation> = Vec::new();
        for op in ops {
            match op {
                Op::Reserve { device, bytes, what } => {
                    let d = DEVICES[device];
                    let in_use = live_bytes(&live, d);
                    let need = i64::try_from(bytes).expect("small");
                    match ledger.try_reserve(d, bytes, what) {
                        Ok(r) => {
                            prop_assert!(in_use + need <= budget[device]);
                            prop_assert_eq!((r.device(), r.bytes(), r.what()), (d, bytes, what));
                            live.push(r);
                        }
                        Err(refusal) => {
                            prop_assert!(in_use + need > budget[device]);
                            let expected = Refusal::OverBudget {
                                device: d, what, need, budget: budget[device], in_use,
                            };
                            prop_assert_eq!(refusal, expected);
                        }
                    }
                }
                Op::Release { pick } => {
                    if !live.is_empty() {
                        drop(live.swap_remove(pick % live.len()));
                    }
                }
                Op::SetBudget { device, bytes } => {
                    prop_assert!(ledger.set_budget(DEVICES[device], bytes));
                    budget[device] = bytes.max(0);
                }
            }
            assert_matches_live(&ledger, &live);
        }
        drop(live);
        for u in ledger.snapshot() {
            prop_assert_eq!((u.used, u.weights, u.activations), (0, 0, 0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn concurrent_reservations_never_exceed_the_budget_and_all_come_back(
        budget in 50..400i64,
        per_thread in proptest::collection::vec(proptest::collection::vec(op(), 50..300), 4),
    ) {
        let ledger = Arc::new(Ledger::new(DEVICES.map(|d| (d, budget))));
        let kept: Vec<Vec<Reservation>> = std::thread::scope(|s| {
            let workers: Vec<_> = per_thread
                .iter()
                .map(|ops| {
                    let ledger = &ledger;
                    s.spawn(move || {
                        let mut live = Vec::new();
                        for op in ops {
                            match *op {
                                Op::Reserve { device, bytes, what } => {
                                    if let Ok(r) = ledger.try_reserve(DEVICES[device], bytes, what) {
                                        live.push(r);
                                    }
                                }
                                Op::Release { pick } if !live.is_empty() => {
                                    drop(live.swap_remove(pick % live.len()));
                                }
                                Op::Release { .. } | Op::SetBudget { .. } => {}
                            }
                            for u in ledger.snapshot() {
                                assert!(u.used <= budget, "{} above budget {budget}", u.used);
                            }
                        }
                        live
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("worker")).collect()
        });
        let live: Vec<Reservation> = kept.into_iter().flatten().collect();
        assert_matches_live(&ledger, &live);
        drop(live);
        for u in ledger.snapshot() {
            prop_assert_eq!(u.used, 0);
        }
    }
}
