//! Running a lab file's steps: each probe, what Docker's semantics expect, what happened.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::spec::{Expect, StepSpec};
use super::{Lab, LabError, Outcome};

/// One step's result.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// 1-based step number.
    pub number: usize,
    /// The step as described.
    pub step: StepSpec,
    /// What the probe saw.
    pub outcome: Outcome,
}

impl StepResult {
    /// Whether the outcome is what the step expects: an answer for `pass`, silence (a
    /// timeout) for `drop`.
    pub fn as_expected(&self) -> bool {
        match self.step.expect {
            Expect::Pass => self.outcome.passed(),
            Expect::Drop => self.outcome == Outcome::TimedOut,
        }
    }
}

impl Lab {
    /// Runs the lab file's steps in order, each probe bounded by `timeout`, stopping early
    /// (with the results so far) when `stop` is set, e.g. by Ctrl-C.
    pub fn run_steps(
        &self,
        timeout: Duration,
        stop: &AtomicBool,
        mut on_result: impl FnMut(&StepResult),
    ) -> Result<Vec<StepResult>, LabError> {
        let mut out = Vec::new();
        for (i, step) in self.spec().steps.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let outcome = self.connect(&step.from, &step.to, step.proto, step.port, timeout)?;
            let r = StepResult {
                number: i + 1,
                step: step.clone(),
                outcome,
            };
            on_result(&r);
            out.push(r);
        }
        Ok(out)
    }
}
