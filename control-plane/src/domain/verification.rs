//! What a check concludes from the outputs it compared: [`decide`] is a pure function of the
//! round and the workload's comparison rule, and returns every verdict, payment and the
//! outcome, which `checks::apply` writes in one transaction.
//!
//! The rules:
//! - First round: the executor's output against one re-execution on another owner's device.
//!   Agreement passes the executor and pays the verifier; disagreement disputes the check and
//!   nobody is judged yet.
//! - Tie-break: a third owner's device runs the job again and is paid whatever it finds. The
//!   side it agrees with wins: the executor passes and the verifier fails (and is not paid), or
//!   the executor fails (its credits are clawed back) and the verifier is paid. No majority is
//!   inconclusive: nobody is judged, the verifier is paid, and the admins see it in the audit
//!   log.
//! - A check that could not run in time (no payload, no device of another owner) is
//!   unverifiable: nobody is judged or paid.

use mesh_proto::Comparison;
use mesh_proto::api::CheckState;

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
    /// The first re-execution came back.
    First {
        /// The executor's output.
        original: &'a [u8],
        /// The verifier's.
        check: &'a [u8],
    },
    /// The tie-break came back (the first two disagreed).
    Tiebreak {
        /// The executor's output.
        original: &'a [u8],
        /// The verifier's.
        check: &'a [u8],
        /// The tie-breaker's.
        third: &'a [u8],
    },
    /// The check could not run in time.
    Unavailable(Unavailable),
}

/// Why a check could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The job's input and output never reached the control plane.
    NoPayload,
    /// No device of an owner who may check it was available before the deadline.
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// No two of three results agree.
    Inconclusive,
    /// It could not be checked.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Verdicts on the parties (each recorded once per job and device).
    pub verdicts: Vec<Verdict>,
    /// Payments to the parties.
    pub payments: Vec<Payment>,
    /// Where the check ends up.
    pub outcome: Outcome,
    /// What happened, in words.
    pub detail: &'static str,
    /// Whether the admins should see it in the audit log (beyond failed verdicts, which are
    /// logged with the verdict).
    pub audit: bool,
}

/// Decide one round of a check by `rule`.
pub fn decide(round: Round<'_>, rule: &Comparison) -> Decision {
    match round {
        Round::Unavailable(why) => Decision {
            verdicts: Vec::new(),
            payments: Vec::new(),
            outcome: Outcome::Unverifiable,
            detail: match why {
                Unavailable::NoPayload => "the job input and output were not provided in time",
                Unavailable::NoVerifier => {
                    "no device of another owner could re-execute it in time; nobody is penalised"
                }
            },
            audit: false,
        },
        Round::First { original, check } => match rule.compare(original, check) {
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
                audit: false,
            },
            Err(mismatch) => Decision {
                verdicts: Vec::new(),
                payments: Vec::new(),
                outcome: Outcome::Disputed {
                    mismatch: mismatch.to_string(),
                },
                detail: "the re-execution disagrees; a third device breaks the tie",
                audit: false,
            },
        },
        Round::Tiebreak {
            original,
            check,
            third,
        } => {
            let with_executor = rule.compare(original, third).is_ok();
            let with_verifier = rule.compare(check, third).is_ok();
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
                    verdicts: vec![
                        Verdict {
                            party: Party::Executor,
                            passed: true,
                            reason: "the tie-break agreed with the executor",
                        },
                        Verdict {
                            party: Party::Verifier,
                            passed: false,
                            reason: "its re-execution disagreed with the executor and the tie-break",
                        },
                    ],
                    payments: vec![tiebreaker_paid],
                    outcome: Outcome::Passed,
                    detail: "the tie-break agreed with the executor",
                    audit: false,
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
                    audit: false,
                },
                _ => Decision {
                    verdicts: Vec::new(),
                    payments: vec![tiebreaker_paid, verifier_paid],
                    outcome: Outcome::Inconclusive,
                    detail: "no two of three results agree",
                    audit: true,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"a";
    const B: &[u8] = b"b";
    const C: &[u8] = b"c";

    fn verdicts(d: &Decision) -> Vec<(Party, bool)> {
        d.verdicts.iter().map(|v| (v.party, v.passed)).collect()
    }

    fn paid(d: &Decision) -> Vec<Party> {
        d.payments.iter().map(|p| p.to).collect()
    }

    /// One row of the decision table: name, round, verdicts, who is paid, outcome.
    type Case<'a> = (
        &'a str,
        Round<'a>,
        Vec<(Party, bool)>,
        Vec<Party>,
        CheckState,
    );

    #[test]
    fn every_round_decides_verdicts_payments_and_outcome() {
        let exact = Comparison::Exact;
        let cases: Vec<Case<'_>> = vec![
            (
                "agree",
                Round::First {
                    original: A,
                    check: A,
                },
                vec![(Party::Executor, true)],
                vec![Party::Verifier],
                CheckState::Passed,
            ),
            (
                "disagree",
                Round::First {
                    original: A,
                    check: B,
                },
                vec![],
                vec![],
                CheckState::Disputed,
            ),
            (
                "tie-break won by the executor",
                Round::Tiebreak {
                    original: A,
                    check: B,
                    third: A,
                },
                vec![(Party::Executor, true), (Party::Verifier, false)],
                vec![Party::Tiebreaker],
                CheckState::Passed,
            ),
            (
                "tie-break lost by the executor",
                Round::Tiebreak {
                    original: A,
                    check: B,
                    third: B,
                },
                vec![(Party::Executor, false)],
                vec![Party::Tiebreaker, Party::Verifier],
                CheckState::Failed,
            ),
            (
                "inconclusive: three different results",
                Round::Tiebreak {
                    original: A,
                    check: B,
                    third: C,
                },
                vec![],
                vec![Party::Tiebreaker, Party::Verifier],
                CheckState::Inconclusive,
            ),
            (
                "unverifiable: no payload",
                Round::Unavailable(Unavailable::NoPayload),
                vec![],
                vec![],
                CheckState::Unverifiable,
            ),
            (
                "unverifiable: no verifier",
                Round::Unavailable(Unavailable::NoVerifier),
                vec![],
                vec![],
                CheckState::Unverifiable,
            ),
        ];
        for (case, round, want_verdicts, want_paid, want_state) in cases {
            let decision = decide(round, &exact);
            assert_eq!(verdicts(&decision), want_verdicts, "{case}: verdicts");
            assert_eq!(paid(&decision), want_paid, "{case}: payments");
            assert_eq!(decision.outcome.state(), want_state, "{case}: outcome");
            assert_eq!(
                decision.audit,
                want_state == CheckState::Inconclusive,
                "{case}: audit"
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
            original: one,
            check: two,
        };
        assert_eq!(
            decide(round, &Comparison::Exact).outcome.state(),
            CheckState::Disputed
        );
        let cosine = Comparison::Cosine(0.99);
        assert_eq!(decide(round, &cosine).outcome.state(), CheckState::Passed);
    }
}
