//! A transfer of one call leg by REFER, as a sans-IO state machine: the call layer feeds it
//! the REFER's answer and the NOTIFYs, and it answers with the steps to take (events to
//! publish in call-api's names, and when to hang up our dialog). No locks, no I/O.
//!
//! `Transferring` (REFER sent) → `TransferStart` (202) → `TransferPending` (each 1xx NOTIFY)
//! → `TransferSuccessful` (a 2xx NOTIFY; we then BYE our dialog, RFC 5589 §6) or
//! `TransferFailed` with the SIP status (REFER refused, or the new call failed; the call
//! goes on as before).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// REFER sent, no final answer yet.
    Requested,
    /// 202 received: waiting for the NOTIFYs.
    Accepted,
    Done,
}

/// What the call layer does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Event {
        name: &'static str,
        sip_status: Option<u16>,
        reason: Option<String>,
    },
    /// The transfer succeeded: end our dialog with the transferee.
    HangUp,
}

#[derive(Debug, Clone)]
pub struct Transfer {
    /// The Refer-To target (for attended transfer, the other call's far end).
    pub target: String,
    /// Attended: our call whose far end the transferee joins.
    pub replaces: Option<String>,
    stage: Stage,
}

fn event(name: &'static str, sip_status: Option<u16>, reason: Option<String>) -> Step {
    Step::Event {
        name,
        sip_status,
        reason,
    }
}

impl Transfer {
    /// A REFER is about to go out.
    pub fn start(target: String, replaces: Option<String>) -> (Self, Vec<Step>) {
        let reason = Some(format!("to {target}"));
        (
            Self {
                target,
                replaces,
                stage: Stage::Requested,
            },
            vec![event("Transferring", None, reason)],
        )
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The final answer to the REFER.
    pub fn on_answer(&mut self, status: u16) -> Vec<Step> {
        if self.stage != Stage::Requested {
            return Vec::new();
        }
        if (200..300).contains(&status) {
            self.stage = Stage::Accepted;
            vec![event("TransferStart", Some(status), None)]
        } else {
            self.stage = Stage::Done;
            vec![event(
                "TransferFailed",
                Some(status),
                Some(format!("REFER answered {status}")),
            )]
        }
    }

    /// A NOTIFY: the status line of the transferee's call to the target.
    pub fn on_progress(&mut self, status: u16, line: &str, terminated: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        match self.stage {
            Stage::Done => return steps,
            // A NOTIFY may overtake the 202 (they are separate transactions): the REFER
            // was accepted.
            Stage::Requested => {
                self.stage = Stage::Accepted;
                steps.push(event("TransferStart", None, None));
            }
            Stage::Accepted => {}
        }
        match status {
            100..=199 if !terminated => steps.push(event(
                "TransferPending",
                Some(status),
                Some(line.to_string()),
            )),
            200..=299 => {
                self.stage = Stage::Done;
                steps.push(event(
                    "TransferSuccessful",
                    Some(status),
                    Some(line.to_string()),
                ));
                steps.push(Step::HangUp);
            }
            _ => {
                self.stage = Stage::Done;
                let reason = if status < 200 {
                    format!("subscription ended at {line}")
                } else {
                    line.to_string()
                };
                steps.push(event("TransferFailed", Some(status), Some(reason)));
            }
        }
        steps
    }

    /// No final NOTIFY came in time (`transfer_timeout_s`): the transfer failed and the call
    /// goes on, so that another one can be tried.
    pub fn on_timeout(&mut self, waited_s: u64) -> Vec<Step> {
        if self.stage == Stage::Done {
            return Vec::new();
        }
        self.stage = Stage::Done;
        vec![event(
            "TransferFailed",
            Some(408),
            Some(format!("no final NOTIFY within {waited_s} s")),
        )]
    }

    /// The call ended before the transfer's outcome was known.
    pub fn on_call_ended(&mut self) -> Vec<Step> {
        if self.stage == Stage::Done {
            return Vec::new();
        }
        self.stage = Stage::Done;
        vec![event(
            "TransferFailed",
            None,
            Some("the call ended before the transfer completed".into()),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::Event { name, .. } => *name,
                Step::HangUp => "hangup",
            })
            .collect()
    }

    #[test]
    fn a_blind_transfer_that_succeeds_hangs_up_after_the_2xx_notify() {
        let (mut t, steps) = Transfer::start("sip:carol@h".into(), None);
        assert_eq!(names(&steps), ["Transferring"]);
        assert_eq!(names(&t.on_answer(202)), ["TransferStart"]);
        assert_eq!(
            names(&t.on_progress(100, "100 Trying", false)),
            ["TransferPending"]
        );
        assert_eq!(
            names(&t.on_progress(180, "180 Ringing", false)),
            ["TransferPending"]
        );
        assert_eq!(
            names(&t.on_progress(200, "200 OK", true)),
            ["TransferSuccessful", "hangup"]
        );
        assert!(t.is_done());
        assert!(t.on_progress(200, "200 OK", true).is_empty());
        assert!(t.on_call_ended().is_empty());
    }

    #[test]
    fn a_refused_refer_or_a_failed_new_call_fails_with_its_status() {
        let (mut t, _) = Transfer::start("sip:x@h".into(), None);
        let steps = t.on_answer(603);
        assert_eq!(
            steps,
            vec![Step::Event {
                name: "TransferFailed",
                sip_status: Some(603),
                reason: Some("REFER answered 603".into())
            }]
        );
        assert!(t.is_done());

        let (mut t, _) = Transfer::start("sip:x@h".into(), None);
        t.on_answer(202);
        let steps = t.on_progress(486, "486 Busy Here", true);
        assert_eq!(
            steps,
            vec![Step::Event {
                name: "TransferFailed",
                sip_status: Some(486),
                reason: Some("486 Busy Here".into())
            }]
        );
    }

    #[test]
    fn a_notify_before_the_202_counts_as_accepted_and_a_late_202_is_ignored() {
        let (mut t, _) = Transfer::start("sip:x@h".into(), None);
        assert_eq!(
            names(&t.on_progress(100, "100 Trying", false)),
            ["TransferStart", "TransferPending"]
        );
        assert!(t.on_answer(202).is_empty());
    }

    #[test]
    fn a_subscription_ended_on_a_1xx_or_the_call_ending_is_a_failure() {
        let (mut t, _) = Transfer::start("sip:x@h".into(), None);
        t.on_answer(202);
        assert_eq!(
            names(&t.on_progress(180, "180 Ringing", true)),
            ["TransferFailed"]
        );
        let (mut t, _) = Transfer::start("sip:x@h".into(), None);
        t.on_answer(202);
        assert_eq!(names(&t.on_call_ended()), ["TransferFailed"]);
    }

    #[test]
    fn a_transfer_without_a_final_notify_times_out_once() {
        let (mut t, _) = Transfer::start("sip:x@h".into(), None);
        t.on_answer(202);
        t.on_progress(100, "100 Trying", false);
        let steps = t.on_timeout(60);
        assert_eq!(
            steps,
            vec![Step::Event {
                name: "TransferFailed",
                sip_status: Some(408),
                reason: Some("no final NOTIFY within 60 s".into())
            }]
        );
        assert!(t.is_done());
        assert!(t.on_timeout(60).is_empty());
        assert!(
            t.on_progress(200, "200 OK", true).is_empty(),
            "a late NOTIFY changes nothing"
        );
    }
}
