//! What a check concludes from the outputs it compared: [`decide`] is a pure function of the
//! round and the workload's comparison rule, and returns every verdict, payment, forfeit,
//! suspicion and the outcome, which `checks::apply` writes in one transaction.
//!
//! The parties: the requester R (who paid and would receive a clawback), the executor E's
//! owner (who was paid), and the judges who re-execute: a verifier V and, when V disagrees,
//! a tie-breaker T. The rules, so that nobody profits from a false accusation or from
//! colluding with one other person:
//! - R's jobs on R's own devices are never checked (their VRF rate is 0): no credits move, so
//!   nobody has a stake, and checking them would let others earn verifier pay from the network
//!   or outvote a verifier on a job nobody paid for.
//! - A judge is never R, never E, and V and T are different people
//!   (`store::jobs::may_not_judge`); judges are drawn like executors, trust-weighted at
//!   random, so nobody can count on judging a given job.
//! - Only when the network has no such judge at all (two owners: R and E) does R's own device
//!   re-execute (an *own check*): it can confirm nothing (no verdict, no pay), and a
//!   disagreement is settled as below, which refunds R nothing.
//! - V agrees: E passes, V is paid (from the network's issuer, the job's price).
//! - V disagrees: T runs it and is paid whatever it finds. T sides with V: E fails, its pay is
//!   clawed back to R, V is paid. T sides with E: E passes, V is unpaid and suspected, but not
//!   failed: a failed verdict needs two judges against the device, and E is not a judge.
//! - No majority (three different results), or a dispute nobody may break (no T in the
//!   network, or none before the deadline): nobody is judged or paid, R is not refunded, E's
//!   pay is forfeited to the network (unconfirmed work is not paid), every device involved is
//!   suspected (trusted and checked like a new device again) and the admins see it in the
//!   audit log. So a liar gains nothing from the dispute it caused: not the verifier (unpaid),
//!   not R (no refund, nor a clawback without a second judge), not E (unpaid).
//! - A check that could not start (no payload, no judge in time) is unverifiable: nobody is
//!   judged or paid.

use mesh_proto::api::CheckState;
use mesh_proto::{Comparison, ModelBinding};

/// One result a check compares: its bytes and the models its receipt names, which calibrate
/// the comparison ([`Comparison::calibrated`]: results of the same precision must agree far
/// more closely than the declared bound).
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    /// The output bytes.
    pub bytes: &'a [u8],
    /// The models its receipt names.
    pub models: &'a [ModelBinding],
}

impl<'a> Output<'a> {
    /// An output whose receipt names `models`.
    pub fn new(bytes: &'a [u8], models: &'a [ModelBinding]) -> Self {
        Output { bytes, models }
    }
}

/// Whether a judge's output upholds the executor's, by `rule` calibrated to their
/// precisions: the same result, or (generation) a verdict that the executor's is consistent.
fn agree(
    rule: &Comparison,
    original: Output<'_>,
    judged: Output<'_>,
) -> Result<(), mesh_proto::Mismatch> {
    rule.calibrated(original.models, judged.models)
        .judge_agrees(original.bytes, judged.bytes)
}

/// Whether two judges' outputs agree (the same result, or the same verdict).
fn judges_agree(
    rule: &Comparison,
    a: Output<'_>,
    b: Output<'_>,
) -> Result<(), mesh_proto::Mismatch> {
    rule.calibrated(a.models, b.models)
        .judges_agree(a.bytes, b.bytes)
}

/// Who took part in a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The device whose result is checked.
    Executor,
    /// The device of the first re-execution.
    Verifier,
    /// The device of the tie-break.
    Tiebreaker,
}

/// The outputs one round of a check compares.
#[derive(Debug, Clone, Copy)]
pub enum Round<'a> {
    /// The first re-execution, by a judge, came back.
    First {
        /// The executor's output.
        original: Output<'a>,
        /// The verifier's.
        check: Output<'a>,
    },
    /// The requester's own device re-executed it (the network has no other judge).
    OwnCheck {
        /// The executor's output.
        original: Output<'a>,
        /// The requester's device's.
        check: Output<'a>,
    },
    /// The tie-break came back (the first two disagreed).
    Tiebreak {
        /// The executor's output.
        original: Output<'a>,
        /// The verifier's.
        check: Output<'a>,
        /// The tie-breaker's.
        third: Output<'a>,
    },
    /// The first re-execution disagreed and no second judge can break the tie: the network
    /// has none, or none came before the deadline.
    Unresolved,
    /// The check could not run in time.
    Unavailable(Unavailable),
}

/// Why a check could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The job's input and output never reached the control plane.
    NoPayload,
    /// No device of an owner who may judge it was available before the deadline.
    NoVerifier,
}

/// A party passed or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Who.
    pub party: Party,
    /// Whether its result stood.
    pub passed: bool,
    /// Why, for its record and the audit log.
    pub reason: &'static str,
}

/// Which re-execution a payment is for (once each per job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaidRound {
    /// The first re-execution.
    Verify,
    /// The tie-break.
    Tiebreak,
}

impl PaidRound {
    /// The suffix of the payment's idempotency key (`job:<id>:<suffix>`).
    pub fn key(self) -> &'static str {
        match self {
            PaidRound::Verify => "verify",
            PaidRound::Tiebreak => "tiebreak",
        }
    }
}

/// The network pays a party the job's price for re-executing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    /// Whom.
    pub to: Party,
    /// For which re-execution.
    pub round: PaidRound,
}

/// Where the check ends up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    /// The executor's result stands.
    Passed,
    /// The executor's result was wrong; the verifier's is the verified one.
    Failed,
    /// The first re-execution disagreed: a tie-break is due.
    Disputed {
        /// How the outputs differ.
        mismatch: String,
    },
    /// No majority of judges formed.
    Inconclusive,
    /// It could not be checked.
    #[default]
    Unverifiable,
}

impl Outcome {
    /// The check state the outcome leaves.
    pub fn state(&self) -> CheckState {
        match self {
            Outcome::Passed => CheckState::Passed,
            Outcome::Failed => CheckState::Failed,
            Outcome::Disputed { .. } => CheckState::Disputed,
            Outcome::Inconclusive => CheckState::Inconclusive,
            Outcome::Unverifiable => CheckState::Unverifiable,
        }
    }
}

/// Everything a round of a check decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Verdicts on the parties (each recorded once per job and device).
    pub verdicts: Vec<Verdict>,
    /// Payments to the parties.
    pub payments: Vec<Payment>,
    /// Whether the executor's owner gives the job's price to the network (unconfirmed work
    /// is not paid; the requester is not refunded either).
    pub forfeit: bool,
    /// Parties whose passes since their last failure stop counting (no failure is recorded).
    pub suspects: Vec<Party>,
    /// Where the check ends up.
    pub outcome: Outcome,
    /// What happened, in words.
    pub detail: &'static str,
    /// Whether the admins should see it in the audit log (beyond failed verdicts, which are
    /// logged with the verdict).
    pub audit: bool,
}

/// A dispute that ends without a majority of judges.
fn no_majority(suspects: Vec<Party>, detail: &'static str) -> Decision {
    Decision {
        forfeit: true,
        suspects,
        outcome: Outcome::Inconclusive,
        detail,
        audit: true,
        ..Decision::default()
    }
}

/// Decide one round of a check by `rule`.
pub fn decide(round: Round<'_>, rule: &Comparison) -> Decision {
    match round {
        Round::Unavailable(why) => Decision {
            outcome: Outcome::Unverifiable,
            detail: match why {
                Unavailable::NoPayload => "the job input and output were not provided in time",
                Unavailable::NoVerifier => {
                    "no device of an owner who may judge it could re-execute it in time; nobody is penalised"
                }
            },
            ..Decision::default()
        },
        Round::Unresolved => no_majority(
            vec![Party::Executor, Party::Verifier],
            "the re-execution disagreed and no third owner may break the tie; nobody is paid, the executor's pay goes to the network",
        ),
        Round::OwnCheck { original, check } => match agree(rule, original, check) {
            Ok(()) => Decision {
                outcome: Outcome::Passed,
                detail: "the requester's own device agreed (it confirms nothing: no verdict, no pay)",
                ..Decision::default()
            },
            Err(_) => no_majority(
                vec![Party::Executor, Party::Verifier],
                "the requester's own device disagreed and no other owner may judge; nobody is paid, the executor's pay goes to the network",
            ),
        },
        Round::First { original, check } => match agree(rule, original, check) {
            Ok(()) => Decision {
                verdicts: vec![Verdict {
                    party: Party::Executor,
                    passed: true,
                    reason: "re-execution agreed",
                }],
                payments: vec![Payment {
                    to: Party::Verifier,
                    round: PaidRound::Verify,
                }],
                outcome: Outcome::Passed,
                detail: "re-execution on another device agreed",
                ..Decision::default()
            },
            Err(mismatch) => Decision {
                outcome: Outcome::Disputed {
                    mismatch: mismatch.to_string(),
                },
                detail: "the re-execution disagrees; a third device breaks the tie",
                ..Decision::default()
            },
        },
        Round::Tiebreak {
            original,
            check,
            third,
        } => {
            let with_executor = agree(rule, original, third).is_ok();
            let with_verifier = judges_agree(rule, check, third).is_ok();
            let tiebreaker_paid = Payment {
                to: Party::Tiebreaker,
                round: PaidRound::Tiebreak,
            };
            let verifier_paid = Payment {
                to: Party::Verifier,
                round: PaidRound::Verify,
            };
            match (with_executor, with_verifier) {
                (true, false) => Decision {
                    verdicts: vec![Verdict {
                        party: Party::Executor,
                        passed: true,
                        reason: "the tie-break agreed with the executor",
                    }],
                    payments: vec![tiebreaker_paid],
                    suspects: vec![Party::Verifier],
                    outcome: Outcome::Passed,
                    detail: "the tie-break agreed with the executor; the verifier is unpaid and suspected",
                    ..Decision::default()
                },
                (false, true) => Decision {
                    verdicts: vec![Verdict {
                        party: Party::Executor,
                        passed: false,
                        reason: "its result disagreed with two re-executions on other owners' devices",
                    }],
                    payments: vec![tiebreaker_paid, verifier_paid],
                    outcome: Outcome::Failed,
                    detail: "two re-executions on other owners' devices agree against the executor",
                    ..Decision::default()
                },
                _ => no_majority(
                    vec![Party::Executor, Party::Verifier, Party::Tiebreaker],
                    "no two of three results agree; nobody is paid, the executor's pay goes to the network",
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Output<'static> = Output {
        bytes: b"a",
        models: &[],
    };
    const B: Output<'static> = Output {
        bytes: b"b",
        models: &[],
    };
    const C: Output<'static> = Output {
        bytes: b"c",
        models: &[],
    };

    fn verdicts(d: &Decision) -> Vec<(Party, bool)> {
        d.verdicts.iter().map(|v| (v.party, v.passed)).collect()
    }

    fn paid(d: &Decision) -> Vec<Party> {
        d.payments.iter().map(|p| p.to).collect()
    }

    /// One row of the decision table: name, round, verdicts, who is paid, who is suspected,
    /// whether the executor's pay is forfeited, outcome.
    struct Case<'a> {
        name: &'a str,
        round: Round<'a>,
        verdicts: Vec<(Party, bool)>,
        paid: Vec<Party>,
        suspects: Vec<Party>,
        forfeit: bool,
        state: CheckState,
    }

    #[test]
    fn every_round_decides_verdicts_payments_and_outcome() {
        use Party::{Executor, Tiebreaker, Verifier};
        let exact = Comparison::Exact;
        let case = |name, round, verdicts, paid, suspects, forfeit, state| Case {
            name,
            round,
            verdicts,
            paid,
            suspects,
            forfeit,
            state,
        };
        let cases = vec![
            case(
                "agree",
                Round::First {
                    original: A,
                    check: A,
                },
                vec![(Executor, true)],
                vec![Verifier],
                vec![],
                false,
                CheckState::Passed,
            ),
            case(
                "disagree",
                Round::First {
                    original: A,
                    check: B,
                },
                vec![],
                vec![],
                vec![],
                false,
                CheckState::Disputed,
            ),
            case(
                "own check agrees: it confirms nothing",
                Round::OwnCheck {
                    original: A,
                    check: A,
                },
                vec![],
                vec![],
                vec![],
                false,
                CheckState::Passed,
            ),
            case(
                "own check disagrees: no refund, no verdict",
                Round::OwnCheck {
                    original: A,
                    check: B,
                },
                vec![],
                vec![],
                vec![Executor, Verifier],
                true,
                CheckState::Inconclusive,
            ),
            case(
                "tie-break won by the executor",
                Round::Tiebreak {
                    original: A,
                    check: B,
                    third: A,
                },
                vec![(Executor, true)],
                vec![Tiebreaker],
                vec![Verifier],
                false,
                CheckState::Passed,
            ),
            case(
                "tie-break lost by the executor",
                Round::Tiebreak {
                    original: A,
                    check: B,
                    third: B,
                },
                vec![(Executor, false)],
                vec![Tiebreaker, Verifier],
                vec![],
                false,
                CheckState::Failed,
            ),
            case(
                "inconclusive: three different results",
                Round::Tiebreak {
                    original: A,
                    check: B,
                    third: C,
                },
                vec![],
                vec![],
                vec![Executor, Verifier, Tiebreaker],
                true,
                CheckState::Inconclusive,
            ),
            case(
                "inconclusive: a dispute no third owner may break",
                Round::Unresolved,
                vec![],
                vec![],
                vec![Executor, Verifier],
                true,
                CheckState::Inconclusive,
            ),
            case(
                "unverifiable: no payload",
                Round::Unavailable(Unavailable::NoPayload),
                vec![],
                vec![],
                vec![],
                false,
                CheckState::Unverifiable,
            ),
            case(
                "unverifiable: no verifier",
                Round::Unavailable(Unavailable::NoVerifier),
                vec![],
                vec![],
                vec![],
                false,
                CheckState::Unverifiable,
            ),
        ];
        for c in cases {
            let decision = decide(c.round, &exact);
            let name = c.name;
            assert_eq!(verdicts(&decision), c.verdicts, "{name}: verdicts");
            assert_eq!(paid(&decision), c.paid, "{name}: payments");
            assert_eq!(decision.suspects, c.suspects, "{name}: suspects");
            assert_eq!(decision.forfeit, c.forfeit, "{name}: forfeit");
            assert_eq!(decision.outcome.state(), c.state, "{name}: outcome");
            assert_eq!(
                decision.audit,
                c.state == CheckState::Inconclusive,
                "{name}: audit"
            );
            // The rule's invariants: nobody is paid by a check that judged nobody; a failed
            // verdict is only ever on the executor, by two judges; the executor's pay is
            // never both kept confirmed and forfeited.
            if decision.verdicts.is_empty() {
                assert!(
                    decision.payments.is_empty(),
                    "{name}: paid without a verdict"
                );
            }
            for v in decision.verdicts.iter().filter(|v| !v.passed) {
                assert_eq!(v.party, Executor, "{name}: a judge failed");
                assert!(matches!(c.round, Round::Tiebreak { .. }), "{name}");
            }
            assert!(
                !(decision.forfeit && decision.verdicts.iter().any(|v| v.passed)),
                "{name}"
            );
        }
    }

    #[test]
    fn a_dispute_says_how_the_outputs_differ() {
        let decision = decide(
            Round::First {
                original: A,
                check: B,
            },
            &Comparison::Exact,
        );
        let Outcome::Disputed { mismatch } = decision.outcome else {
            panic!("expected a dispute, got {:?}", decision.outcome);
        };
        assert!(!mismatch.is_empty());
    }

    #[test]
    fn the_rule_decides_what_agrees() {
        // Two embeddings a hair apart: unequal bytes, the same under cosine tolerance.
        let one = br#"{"embeddings": [[0.6, 0.8]]}"#;
        let two = br#"{"embeddings": [[0.6000001, 0.7999999]]}"#;
        let round = Round::First {
            original: Output::new(one, &[]),
            check: Output::new(two, &[]),
        };
        assert_eq!(
            decide(round, &Comparison::Exact).outcome.state(),
            CheckState::Disputed
        );
        let cosine = Comparison::Cosine(0.99);
        assert_eq!(decide(round, &cosine).outcome.state(), CheckState::Passed);
    }

    #[test]
    fn the_receipts_precisions_calibrate_the_rule() {
        let model = |variant: &str| ModelBinding {
            name: "m".into(),
            hash: mesh_proto::Blake3Hash::of(variant.as_bytes()),
            variant: variant.into(),
        };
        let (fp32, fp32_ort, int8) = ([model("fp32")], [model("fp32-ort")], [model("int8")]);
        // Cosine 0.995: what an int8 model passed off as fp32, or a cheater's noise, reaches.
        let truth = br#"{"embeddings": [[1.0, 0.0]]}"#;
        let off = br#"{"embeddings": [[0.995, 0.09987492]]}"#;
        let cosine = Comparison::Cosine(0.99);
        let state = |a: &[ModelBinding], b: &[ModelBinding]| {
            let round = Round::First {
                original: Output::new(off, a),
                check: Output::new(truth, b),
            };
            decide(round, &cosine).outcome.state()
        };
        // The same precision (any backend's variant of it) must agree to honest variance.
        assert_eq!(state(&fp32, &fp32_ort), CheckState::Disputed);
        // Declared different precisions keep the workload's bound.
        assert_eq!(state(&int8, &fp32), CheckState::Passed);
        // Receipts that do not say (older hosts) keep it too.
        assert_eq!(state(&[], &fp32), CheckState::Passed);
    }

    #[test]
    fn generations_are_judged_by_the_judges_verdicts_never_by_the_executors_output() {
        let rule = Comparison::Generation(0.5);
        let answer = br#"{"text": "Paris.", "tokens": [7042, 30], "finish_reason": "stop"}"#;
        let yes = br#"{"verdict": "consistent", "checked_tokens": 2, "worst_gap": 0.0}"#;
        let no = br#"{"verdict": "inconsistent", "checked_tokens": 1, "reason": "token 0"}"#;
        let first = |original: &'static [u8], check: &'static [u8]| {
            decide(
                Round::First {
                    original: Output::new(original, &[]),
                    check: Output::new(check, &[]),
                },
                &rule,
            )
            .outcome
            .state()
        };
        assert_eq!(first(answer, yes), CheckState::Passed);
        assert_eq!(first(answer, no), CheckState::Disputed);
        // A judge that answers no verdict (its own generation, garbage) upholds nothing.
        assert_eq!(first(answer, answer), CheckState::Disputed);
        assert_eq!(first(answer, b"garbage"), CheckState::Disputed);
        // An executor that answers with a verdict of its own instead of text gains nothing:
        // its output is only ever the thing judged.
        assert_eq!(first(no, no), CheckState::Disputed);
        let tiebreak = |check: &'static [u8], third: &'static [u8]| {
            decide(
                Round::Tiebreak {
                    original: Output::new(answer, &[]),
                    check: Output::new(check, &[]),
                    third: Output::new(third, &[]),
                },
                &rule,
            )
            .outcome
            .state()
        };
        // The tie-breaker's verdict sides with the verifier's or with the executor.
        assert_eq!(tiebreak(no, no), CheckState::Failed);
        assert_eq!(tiebreak(no, yes), CheckState::Passed);
        assert_eq!(tiebreak(no, b"garbage"), CheckState::Inconclusive);
    }
}
