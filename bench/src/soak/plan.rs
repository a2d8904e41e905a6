//! When the soak's operator acts: a `deploy` every minute from 20 s in, the
//! last one early enough to end before the load does, and an upstream killed
//! during every third deploy (the 2nd, 5th, 8th, …), so every few minutes and
//! in a 2-minute smoke run too. A pure function of the load's length.

use std::time::Duration;

/// The first deploy, from the start of the load: the clients have opened
/// sessions and streams on the first slot by then.
pub const FIRST_DEPLOY: Duration = Duration::from_secs(20);
/// One deploy every minute (the pace).
pub const DEPLOY_EVERY: Duration = Duration::from_secs(60);
/// A deploy lasts up to the longest client stream (30 s) plus the drain's
/// quiet period, or the watch window; this much of the load is left after
/// the last one starts, so that it ends under load.
pub const DEPLOY_ROOM: Duration = Duration::from_secs(40);
/// Every this many deploys, the slot being drained is killed.
pub const KILL_EVERY: usize = 3;
/// How long after the flip the draining slot is killed: its tickers (up to
/// 30 s) are still open then, and so are many of its sessions (a few
/// seconds each), some with a request in flight.
pub const KILL_AFTER_FLIP: Duration = Duration::from_secs(1);

/// One scheduled deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// From the start of the load.
    pub at: Duration,
    /// Kill the slot it drains, [`KILL_AFTER_FLIP`] after the flip.
    pub kill: bool,
}

/// The deploys of a load of `load` length.
pub fn steps(load: Duration) -> Vec<Step> {
    let mut out = Vec::new();
    let mut at = FIRST_DEPLOY;
    while at + DEPLOY_ROOM <= load {
        out.push(Step {
            at,
            kill: out.len() % KILL_EVERY == 1,
        });
        at += DEPLOY_EVERY;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(steps: &[Step]) -> Vec<(u64, bool)> {
        steps.iter().map(|s| (s.at.as_secs(), s.kill)).collect()
    }

    #[test]
    fn the_smoke_run_deploys_twice_and_kills_once() {
        assert_eq!(
            secs(&steps(Duration::from_secs(120))),
            vec![(20, false), (80, true)]
        );
    }

    #[test]
    fn thirty_minutes_deploy_every_minute_and_kill_every_three() {
        let s = steps(Duration::from_secs(30 * 60));
        assert_eq!(s.len(), 30);
        assert_eq!(s.last().map(|s| s.at.as_secs()), Some(20 + 29 * 60));
        assert!(s.windows(2).all(|w| w[1].at - w[0].at == DEPLOY_EVERY));
        let kills: Vec<u64> = s
            .iter()
            .filter(|s| s.kill)
            .map(|s| s.at.as_secs())
            .collect();
        assert_eq!(kills.len(), 10);
        assert_eq!(&kills[..3], &[80, 260, 440]);
        // Every deploy ends before the load does.
        assert!(s
            .iter()
            .all(|s| s.at + DEPLOY_ROOM <= Duration::from_secs(1800)));
    }

    #[test]
    fn a_minute_has_room_for_one_deploy_and_no_kill() {
        assert_eq!(secs(&steps(Duration::from_secs(60))), vec![(20, false)]);
        assert!(steps(Duration::from_secs(59)).is_empty());
    }
}
