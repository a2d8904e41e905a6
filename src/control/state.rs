//! The control state machine: the slots' weights, states and generations, and
//! the one pure function that changes them, [`apply`]. Every rule lives here,
//! once: who may be drained, what would leave nothing serving, the weight
//! bounds, generation overflow, a flip to the slot that is already active,
//! what a retired slot may do, what a reload may remove. The same rules check
//! a state restored from disk ([`State::restore`]).
//!
//! Nothing here touches a socket, a clock, a file or a counter: `apply` takes
//! a state and a command and returns the next state and what happened, or
//! why not. The controller owns the current state and runs `apply` in order.

use std::collections::BTreeMap;

use crate::control::protocol::{CtlError, Event, SlotBrief, Weight};
use crate::table::{SlotState, MAX_WEIGHT};

/// The last generation a slot may reach. A tag carries the generation, and a
/// restart (`standby`, a re-addressing reload) adds one; one below `u32::MAX`
/// keeps the arithmetic far from wrapping, and a file with `u32::MAX` is one
/// no proxy wrote.
pub const MAX_GENERATION: u32 = u32::MAX - 1;

/// The weight a flip gives its slot.
pub const FLIP_WEIGHT: u32 = 100;

/// One slot's control state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotRecord {
    pub name: String,
    pub weight: u32,
    pub state: SlotState,
    pub generation: u32,
}

impl SlotRecord {
    /// A slot as the config starts it: serving with its weight, else standby.
    pub fn from_config(name: &str, weight: u32) -> Self {
        SlotRecord {
            name: name.to_owned(),
            weight,
            state: if weight > 0 {
                SlotState::Serving
            } else {
                SlotState::Standby
            },
            generation: 1,
        }
    }

    fn brief(&self) -> SlotBrief {
        SlotBrief {
            name: self.name.clone(),
            weight: self.weight,
            state: self.state,
            generation: self.generation,
        }
    }

    fn serving(&self) -> bool {
        self.state == SlotState::Serving
    }
}

/// Every slot (in config order), the slot to roll back to, and a revision
/// that grows by one with every change.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub slots: Vec<SlotRecord>,
    pub previous_active: Option<String>,
    pub revision: u64,
}

/// A change to the state. Requests that only read or wait (`status`, `wait`,
/// `probe`) never become commands; a probe gates a flip before it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set these weights in one step. A serving slot set to 0 goes to
    /// `standby`, or with `drain` to `draining` (its sessions keep going to it).
    Weights { weights: Vec<Weight>, drain: bool },
    /// `to` gets [`FLIP_WEIGHT`]; every other serving slot 0, draining or standby.
    Flip { to: String, drain: bool },
    /// Stop new sessions to `slot`; its sessions keep going to it.
    Drain { slot: String },
    /// The drain of `slot` at `generation` has ended (sent by its drain task).
    Drained { slot: String, generation: u32 },
    /// `slot`'s process is gone.
    Retire { slot: String },
    /// `slot`'s process was started again: a new generation.
    Standby { slot: String },
    /// Make the slots those of a reloaded config. `busy` names the slots that
    /// still have live streams or requests in flight.
    Reconcile {
        slots: Vec<ConfigSlot>,
        busy: Vec<String>,
    },
}

/// A slot as a reloaded config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSlot {
    pub name: String,
    /// Its configured weight (used for a slot that is new).
    pub weight: u32,
    /// Its upstream (or CA) differs from the running one.
    pub readdressed: bool,
}

impl State {
    /// The state a config starts with.
    pub fn from_config<'a>(slots: impl IntoIterator<Item = (&'a str, u32)>) -> State {
        State {
            slots: slots
                .into_iter()
                .map(|(n, w)| SlotRecord::from_config(n, w))
                .collect(),
            previous_active: None,
            revision: 0,
        }
    }

    pub fn get(&self, name: &str) -> Option<&SlotRecord> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// The serving slot with the highest weight (the last of equals, as the
    /// routing table reports it).
    pub fn active(&self) -> Option<&SlotRecord> {
        self.slots
            .iter()
            .filter(|s| s.serving())
            .max_by_key(|s| s.weight)
    }

    /// The index of slot `name`, or `unknown_slot`.
    fn index(&self, name: &str) -> Result<usize, CtlError> {
        self.slots
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| CtlError::unknown_slot(name, self.slots.iter().map(|s| s.name.as_str())))
    }

    /// Whether a slot other than `name` serves.
    fn others_serve(&self, name: &str) -> bool {
        self.slots.iter().any(|s| s.name != name && s.serving())
    }

    /// The rules every state must keep, whatever command made it (and however
    /// it was read from disk).
    pub fn check(&self) -> Result<(), CtlError> {
        for (i, s) in self.slots.iter().enumerate() {
            if self.slots[..i].iter().any(|o| o.name == s.name) {
                return Err(CtlError::BadConfig(format!(
                    "slot {} appears twice",
                    s.name
                )));
            }
            if s.weight > MAX_WEIGHT {
                return Err(CtlError::WeightOutOfRange {
                    slot: s.name.clone(),
                    weight: s.weight,
                });
            }
            if s.generation == 0 || s.generation > MAX_GENERATION {
                return Err(CtlError::GenerationExhausted {
                    slot: s.name.clone(),
                    generation: s.generation,
                });
            }
            // A slot with a weight takes new sessions, and only such a slot serves.
            if s.serving() != (s.weight > 0) {
                return Err(CtlError::BadConfig(format!(
                    "slot {} is {} with weight {}; a slot serves exactly when its weight is above 0",
                    s.name, s.state, s.weight
                )));
            }
        }
        if !self.slots.iter().any(SlotRecord::serving) {
            return Err(CtlError::NoServingSlot(
                "this leaves no slot serving new sessions; give at least one slot a weight above 0"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The state a proxy restarts on: the config's slots, each as `saved`
    /// recorded it (a slot the file does not know starts as configured),
    /// checked as strictly as a command's result. Returns notes for the log
    /// (slots the file knows but the config dropped).
    pub fn restore(
        config: &[(String, u32)],
        saved: &BTreeMap<String, SlotRecord>,
        previous_active: Option<&str>,
        revision: u64,
    ) -> Result<(State, Vec<String>), CtlError> {
        let mut notes = Vec::new();
        let slots = config
            .iter()
            .map(|(name, weight)| match saved.get(name) {
                Some(r) => SlotRecord {
                    name: name.clone(),
                    ..r.clone()
                },
                None => {
                    notes.push(format!(
                        "slot {name} is not in the state file: it starts as configured"
                    ));
                    SlotRecord::from_config(name, *weight)
                }
            })
            .collect();
        for name in saved.keys() {
            if !config.iter().any(|(n, _)| n == name) {
                notes.push(format!(
                    "slot {name} is in the state file but not in the config: ignored"
                ));
            }
        }
        let state = State {
            slots,
            previous_active: previous_active
                .filter(|p| config.iter().any(|(n, _)| n == p))
                .map(str::to_owned),
            revision,
        };
        state.check()?;
        Ok((state, notes))
    }
}

/// Applies `cmd` to `state`: the next state and what happened, or why not. A
/// command that changes nothing returns `state` as it is and no event.
pub fn apply(state: &State, cmd: &Command) -> Result<(State, Vec<Event>), CtlError> {
    let mut next = state.clone();
    let events = match cmd {
        Command::Weights { weights: ws, drain } => weights(&mut next, ws, *drain)?,
        Command::Flip { to, drain } => flip(&mut next, to, *drain)?,
        Command::Drain { slot } => drain(&mut next, slot)?,
        Command::Drained { slot, generation } => drained(&mut next, slot, *generation)?,
        Command::Retire { slot } => retire(&mut next, slot)?,
        Command::Standby { slot } => standby(&mut next, slot)?,
        Command::Reconcile { slots, busy } => reconcile(&mut next, slots, busy)?,
    };
    if events.is_empty() {
        return Ok((state.clone(), events));
    }
    next.check()?;
    next.revision = state.revision + 1;
    Ok((next, events))
}

fn weights(s: &mut State, ws: &[Weight], drain: bool) -> Result<Vec<Event>, CtlError> {
    if ws.is_empty() {
        return Err(CtlError::BadCommand(
            "`weights` needs NAME=W pairs, e.g. `weights blue=90 green=10`".into(),
        ));
    }
    let mut at = Vec::with_capacity(ws.len());
    for (i, w) in ws.iter().enumerate() {
        at.push(s.index(&w.slot)?);
        let slot = &s.slots[at[i]];
        if ws[..i].iter().any(|o| o.slot == w.slot) {
            return Err(CtlError::BadCommand(format!(
                "slot {} is given twice",
                w.slot
            )));
        }
        if w.weight > MAX_WEIGHT {
            return Err(CtlError::WeightOutOfRange {
                slot: w.slot.clone(),
                weight: w.weight,
            });
        }
        if w.weight > 0 && slot.state == SlotState::Retired {
            return Err(CtlError::SlotRetired {
                slot: w.slot.clone(),
            });
        }
    }
    for (w, i) in ws.iter().zip(at) {
        let slot = &mut s.slots[i];
        slot.weight = w.weight;
        slot.state = match (slot.state, w.weight) {
            (_, w) if w > 0 => SlotState::Serving,
            (SlotState::Serving, _) if drain => SlotState::Draining,
            (SlotState::Serving, _) => SlotState::Standby,
            (st, _) => st,
        };
    }
    if !s.slots.iter().any(SlotRecord::serving) {
        return Err(CtlError::NoServingSlot(
            "these weights leave no slot serving; give at least one slot a weight above 0".into(),
        ));
    }
    Ok(vec![Event::WeightsSet {
        slots: s.slots.iter().map(SlotRecord::brief).collect(),
    }])
}

fn flip(s: &mut State, to: &str, drain: bool) -> Result<Vec<Event>, CtlError> {
    let target = &s.slots[s.index(to)?];
    if target.state == SlotState::Retired {
        return Err(CtlError::SlotRetired {
            slot: to.to_owned(),
        });
    }
    if target.serving() && !s.others_serve(to) {
        return Err(CtlError::AlreadyActive {
            slot: to.to_owned(),
        });
    }
    let from = s.active().map(|a| a.name.clone());
    let (mut draining, mut standby) = (Vec::new(), Vec::new());
    for slot in &mut s.slots {
        if slot.name == to {
            slot.weight = FLIP_WEIGHT;
            slot.state = SlotState::Serving;
        } else if slot.serving() {
            slot.weight = 0;
            if drain {
                slot.state = SlotState::Draining;
                draining.push(slot.name.clone());
            } else {
                slot.state = SlotState::Standby;
                standby.push(slot.name.clone());
            }
        }
    }
    if from.as_deref() != Some(to) {
        s.previous_active = from.clone();
    }
    Ok(vec![Event::Flipped {
        from,
        to: to.to_owned(),
        draining,
        standby,
    }])
}

fn drain(s: &mut State, name: &str) -> Result<Vec<Event>, CtlError> {
    let i = s.index(name)?;
    match s.slots[i].state {
        SlotState::Draining | SlotState::Drained => return Ok(vec![]),
        SlotState::Retired => {
            return Err(CtlError::SlotRetired {
                slot: name.to_owned(),
            })
        }
        SlotState::Serving if !s.others_serve(name) => {
            return Err(CtlError::LastServingSlot {
                slot: name.to_owned(),
                command: "drain",
            })
        }
        SlotState::Serving | SlotState::Standby => {}
    }
    let slot = &mut s.slots[i];
    slot.weight = 0;
    slot.state = SlotState::Draining;
    Ok(vec![Event::DrainStarted {
        slot: name.to_owned(),
        generation: slot.generation,
    }])
}

fn drained(s: &mut State, name: &str, generation: u32) -> Result<Vec<Event>, CtlError> {
    let i = s.index(name)?;
    let slot = &mut s.slots[i];
    if slot.state != SlotState::Draining || slot.generation != generation {
        return Err(CtlError::NotDraining {
            slot: name.to_owned(),
            state: slot.state,
        });
    }
    slot.state = SlotState::Drained;
    Ok(vec![Event::SlotDrained {
        slot: name.to_owned(),
        generation,
    }])
}

fn retire(s: &mut State, name: &str) -> Result<Vec<Event>, CtlError> {
    let i = s.index(name)?;
    let slot = &s.slots[i];
    if slot.state == SlotState::Retired {
        return Ok(vec![]);
    }
    if slot.serving() && !s.others_serve(name) {
        return Err(CtlError::LastServingSlot {
            slot: name.to_owned(),
            command: "retire",
        });
    }
    let slot = &mut s.slots[i];
    slot.weight = 0;
    slot.state = SlotState::Retired;
    Ok(vec![Event::Retired {
        slot: name.to_owned(),
    }])
}

fn standby(s: &mut State, name: &str) -> Result<Vec<Event>, CtlError> {
    let i = s.index(name)?;
    let slot = &s.slots[i];
    if slot.serving() && !s.others_serve(name) {
        return Err(CtlError::LastServingSlot {
            slot: name.to_owned(),
            command: "standby",
        });
    }
    if slot.generation >= MAX_GENERATION {
        return Err(CtlError::GenerationExhausted {
            slot: name.to_owned(),
            generation: slot.generation,
        });
    }
    let slot = &mut s.slots[i];
    slot.weight = 0;
    slot.state = SlotState::Standby;
    slot.generation += 1;
    Ok(vec![Event::Standby {
        slot: name.to_owned(),
        generation: slot.generation,
    }])
}

fn reconcile(
    s: &mut State,
    config: &[ConfigSlot],
    busy: &[String],
) -> Result<Vec<Event>, CtlError> {
    let mut events = Vec::new();
    let mut slots = Vec::with_capacity(config.len());
    for c in config {
        match s.get(&c.name) {
            Some(cur) if !c.readdressed => slots.push(cur.clone()),
            Some(cur) => {
                if cur.generation >= MAX_GENERATION {
                    return Err(CtlError::GenerationExhausted {
                        slot: c.name.clone(),
                        generation: cur.generation,
                    });
                }
                // A new address is a new process: its old sessions get 404.
                let state = match cur.state {
                    SlotState::Retired => SlotState::Standby,
                    st => st,
                };
                let generation = cur.generation + 1;
                slots.push(SlotRecord {
                    state,
                    generation,
                    ..cur.clone()
                });
                events.push(Event::SlotReaddressed {
                    slot: c.name.clone(),
                    generation,
                });
            }
            None => {
                let new = SlotRecord::from_config(&c.name, c.weight.min(MAX_WEIGHT));
                events.push(Event::SlotAdded {
                    slot: c.name.clone(),
                    state: new.state,
                });
                slots.push(new);
            }
        }
    }
    for cur in &s.slots {
        if config.iter().any(|c| c.name == cur.name) {
            continue;
        }
        if matches!(cur.state, SlotState::Serving | SlotState::Draining) || busy.contains(&cur.name)
        {
            return Err(CtlError::SlotInUse(format!(
                "the new config removes slot {}, which is {}{}; flip away from it and let it drain first. Nothing changed",
                cur.name,
                cur.state,
                if busy.contains(&cur.name) {
                    " with live streams or requests in flight"
                } else {
                    ""
                }
            )));
        }
        events.push(Event::SlotRemoved {
            slot: cur.name.clone(),
        });
    }
    if !slots.iter().any(SlotRecord::serving) {
        return Err(CtlError::NoServingSlot(
            "after this reload no slot would be serving; nothing changed".into(),
        ));
    }
    if s.previous_active
        .as_ref()
        .is_some_and(|p| !slots.iter().any(|x| x.name == *p))
    {
        s.previous_active = None;
    }
    s.slots = slots;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::ErrorCode;

    /// blue serving 100, green standby, both generation 1.
    fn blue_green() -> State {
        State::from_config([("blue", 100), ("green", 0)])
    }

    fn w(slot: &str, weight: u32) -> Weight {
        Weight {
            slot: slot.into(),
            weight,
        }
    }

    /// `weights` without `--drain`.
    fn plain_weights(weights: Vec<Weight>) -> Command {
        Command::Weights {
            weights,
            drain: false,
        }
    }

    fn ok(s: &State, cmd: Command) -> (State, Vec<Event>) {
        apply(s, &cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    fn refused(s: &State, cmd: Command) -> ErrorCode {
        match apply(s, &cmd) {
            Ok((next, _)) => panic!("{cmd:?} was accepted: {next:?}"),
            Err(e) => e.code(),
        }
    }

    fn rec(s: &State, name: &str) -> SlotRecord {
        s.get(name).cloned().unwrap_or_else(|| panic!("no {name}"))
    }

    fn flip(to: &str, drain: bool) -> Command {
        Command::Flip {
            to: to.into(),
            drain,
        }
    }

    fn cmd_slot(f: fn(String) -> Command, slot: &str) -> Command {
        f(slot.into())
    }

    fn drain_cmd(slot: String) -> Command {
        Command::Drain { slot }
    }
    fn retire_cmd(slot: String) -> Command {
        Command::Retire { slot }
    }
    fn standby_cmd(slot: String) -> Command {
        Command::Standby { slot }
    }

    #[test]
    fn the_config_starts_serving_slots_with_weight_and_standby_without() {
        let s = blue_green();
        assert_eq!(rec(&s, "blue").state, SlotState::Serving);
        assert_eq!(rec(&s, "green").state, SlotState::Standby);
        assert_eq!(s.active().map(|a| a.name.as_str()), Some("blue"));
        s.check().expect("a config's state is valid");
    }

    #[test]
    fn every_change_bumps_the_revision_and_a_no_op_does_not() {
        let s = blue_green();
        let (next, ev) = ok(&s, flip("green", true));
        assert_eq!((next.revision, ev.len()), (1, 1));
        let (same, ev) = ok(&next, cmd_slot(drain_cmd, "blue"));
        assert_eq!(
            (same, ev),
            (next, vec![]),
            "draining a draining slot is a no-op"
        );
    }

    #[test]
    fn weights_set_states_and_stay_in_bounds() {
        let s = blue_green();
        let (next, ev) = ok(&s, plain_weights(vec![w("blue", 90), w("green", 10)]));
        assert_eq!(rec(&next, "green").state, SlotState::Serving);
        assert!(matches!(&ev[..], [Event::WeightsSet { slots }] if slots.len() == 2));
        // A serving slot weighted to 0 goes to standby.
        let (next, _) = ok(&next, plain_weights(vec![w("blue", 0)]));
        assert_eq!(
            (rec(&next, "blue").state, rec(&next, "blue").weight),
            (SlotState::Standby, 0)
        );
        // With `drain`, a serving slot weighted to 0 drains instead; a slot
        // already out of service keeps its state, and a weight brings a
        // draining slot back.
        let (two, _) = ok(&s, plain_weights(vec![w("green", 10)]));
        let to_zero = |drain| Command::Weights {
            weights: vec![w("blue", 0), w("green", 100)],
            drain,
        };
        let (drained, _) = ok(&two, to_zero(true));
        assert_eq!(
            (rec(&drained, "blue").state, rec(&drained, "blue").weight),
            (SlotState::Draining, 0)
        );
        assert_eq!(rec(&drained, "green").state, SlotState::Serving);
        let (again, _) = ok(&drained, to_zero(true));
        assert_eq!(rec(&again, "blue").state, SlotState::Draining);
        let (back, _) = ok(&drained, plain_weights(vec![w("blue", 5)]));
        assert_eq!(rec(&back, "blue").state, SlotState::Serving);
        assert_eq!(
            rec(&ok(&two, to_zero(false)).0, "blue").state,
            SlotState::Standby
        );
        // Bounds: the config's 0..=1_000_000.
        assert_eq!(
            ok(&s, plain_weights(vec![w("blue", MAX_WEIGHT)])).0.slots[0].weight,
            MAX_WEIGHT
        );
        assert_eq!(
            refused(&s, plain_weights(vec![w("blue", MAX_WEIGHT + 1)])),
            ErrorCode::WeightOutOfRange
        );
        assert_eq!(
            refused(&s, plain_weights(vec![w("blue", u32::MAX)])),
            ErrorCode::WeightOutOfRange
        );
        assert_eq!(refused(&s, plain_weights(vec![])), ErrorCode::BadCommand);
        assert_eq!(
            refused(&s, plain_weights(vec![w("blue", 1), w("blue", 2)])),
            ErrorCode::BadCommand
        );
        assert_eq!(
            refused(&s, plain_weights(vec![w("purple", 1)])),
            ErrorCode::UnknownSlot
        );
    }

    #[test]
    fn weights_that_leave_nothing_serving_are_refused() {
        let s = blue_green();
        assert_eq!(
            refused(&s, plain_weights(vec![w("blue", 0)])),
            ErrorCode::NoServingSlot
        );
        assert_eq!(
            refused(&s, plain_weights(vec![w("blue", 0), w("green", 0)])),
            ErrorCode::NoServingSlot
        );
    }

    #[test]
    fn a_retired_slot_gets_no_weight_and_no_flip() {
        let (s, _) = ok(&blue_green(), cmd_slot(retire_cmd, "green"));
        assert_eq!(
            refused(&s, plain_weights(vec![w("green", 5)])),
            ErrorCode::SlotRetired
        );
        assert_eq!(refused(&s, flip("green", true)), ErrorCode::SlotRetired);
        assert_eq!(
            refused(&s, cmd_slot(drain_cmd, "green")),
            ErrorCode::SlotRetired
        );
        // Weight 0 for a retired slot keeps it retired.
        let (next, _) = ok(&s, plain_weights(vec![w("green", 0), w("blue", 50)]));
        assert_eq!(rec(&next, "green").state, SlotState::Retired);
        // `standby` brings it back, a new generation.
        let (next, _) = ok(&s, cmd_slot(standby_cmd, "green"));
        assert_eq!(
            (rec(&next, "green").state, rec(&next, "green").generation),
            (SlotState::Standby, 2)
        );
        // Retiring twice changes nothing.
        assert_eq!(ok(&s, cmd_slot(retire_cmd, "green")).1, vec![]);
    }

    #[test]
    fn a_flip_moves_every_serving_slot_and_remembers_the_previous() {
        let (s, _) = ok(
            &State::from_config([("blue", 90), ("green", 0), ("canary", 10)]),
            plain_weights(vec![w("canary", 10)]),
        );
        let (next, ev) = ok(&s, flip("green", true));
        assert_eq!(
            ev,
            vec![Event::Flipped {
                from: Some("blue".into()),
                to: "green".into(),
                draining: vec!["blue".into(), "canary".into()],
                standby: vec![],
            }]
        );
        assert_eq!(
            (rec(&next, "green").weight, rec(&next, "green").state),
            (FLIP_WEIGHT, SlotState::Serving)
        );
        assert_eq!(rec(&next, "blue").state, SlotState::Draining);
        assert_eq!(next.previous_active.as_deref(), Some("blue"));
        // Without a drain the old slots go to standby.
        let (next, ev) = ok(&s, flip("green", false));
        assert!(matches!(&ev[..], [Event::Flipped { standby, .. }] if standby.len() == 2));
        assert_eq!(rec(&next, "blue").state, SlotState::Standby);
        // Flipping back to a draining slot makes it serve again.
        let (back, _) = ok(&ok(&s, flip("green", true)).0, flip("blue", true));
        assert_eq!(rec(&back, "blue").state, SlotState::Serving);
        assert_eq!(back.previous_active.as_deref(), Some("green"));
        assert_eq!(refused(&s, flip("purple", true)), ErrorCode::UnknownSlot);
    }

    #[test]
    fn a_flip_to_the_active_slot_is_refused_and_changes_nothing() {
        let s = blue_green();
        assert_eq!(refused(&s, flip("blue", true)), ErrorCode::AlreadyActive);
        assert_eq!(refused(&s, flip("blue", false)), ErrorCode::AlreadyActive);
        // With a canary beside it, a flip to the heavier slot still has work to do.
        let (canary, _) = ok(&s, plain_weights(vec![w("green", 10)]));
        let (next, _) = ok(&canary, flip("blue", true));
        assert_eq!(rec(&next, "green").state, SlotState::Draining);
        assert_eq!(next.previous_active, None, "the active slot did not change");
    }

    #[test]
    fn drain_and_standby_and_retire_of_the_only_serving_slot_are_refused() {
        let s = blue_green();
        assert_eq!(
            refused(&s, cmd_slot(drain_cmd, "blue")),
            ErrorCode::LastServingSlot
        );
        assert_eq!(
            refused(&s, cmd_slot(standby_cmd, "blue")),
            ErrorCode::LastServingSlot
        );
        assert_eq!(
            refused(&s, cmd_slot(retire_cmd, "blue")),
            ErrorCode::LastServingSlot
        );
        // With another slot serving, each is allowed.
        let (two, _) = ok(&s, plain_weights(vec![w("green", 10)]));
        for f in [drain_cmd, standby_cmd, retire_cmd] {
            let (next, _) = ok(&two, f("blue".into()));
            assert!(!rec(&next, "blue").serving());
            assert_eq!(rec(&next, "blue").weight, 0);
        }
    }

    #[test]
    fn drain_rules() {
        let (s, _) = ok(&blue_green(), plain_weights(vec![w("green", 10)]));
        let (next, ev) = ok(&s, cmd_slot(drain_cmd, "green"));
        assert_eq!(
            ev,
            vec![Event::DrainStarted {
                slot: "green".into(),
                generation: 1
            }]
        );
        assert_eq!(rec(&next, "green").state, SlotState::Draining);
        // A standby slot may be drained (its sessions after a flip without --drain).
        let (next, _) = ok(&blue_green(), cmd_slot(drain_cmd, "green"));
        assert_eq!(rec(&next, "green").state, SlotState::Draining);
        // A drained slot stays drained.
        let (d, _) = ok(
            &next,
            Command::Drained {
                slot: "green".into(),
                generation: 1,
            },
        );
        assert_eq!(ok(&d, cmd_slot(drain_cmd, "green")).1, vec![]);
    }

    #[test]
    fn only_the_drain_of_the_current_generation_ends_a_drain() {
        let (s, _) = ok(&blue_green(), flip("green", true));
        assert_eq!(
            refused(
                &s,
                Command::Drained {
                    slot: "blue".into(),
                    generation: 7
                }
            ),
            ErrorCode::NotDraining
        );
        assert_eq!(
            refused(
                &s,
                Command::Drained {
                    slot: "green".into(),
                    generation: 1
                }
            ),
            ErrorCode::NotDraining
        );
        let (next, ev) = ok(
            &s,
            Command::Drained {
                slot: "blue".into(),
                generation: 1,
            },
        );
        assert_eq!(rec(&next, "blue").state, SlotState::Drained);
        assert_eq!(ev.len(), 1);
        // Flipped back before the drain ended: the late `drained` changes nothing.
        let (back, _) = ok(&s, flip("blue", true));
        assert_eq!(
            refused(
                &back,
                Command::Drained {
                    slot: "blue".into(),
                    generation: 1
                }
            ),
            ErrorCode::NotDraining
        );
    }

    #[test]
    fn standby_is_a_new_generation_up_to_the_last_one() {
        let s = blue_green();
        let (next, ev) = ok(&s, cmd_slot(standby_cmd, "green"));
        assert_eq!(rec(&next, "green").generation, 2);
        assert_eq!(
            ev,
            vec![Event::Standby {
                slot: "green".into(),
                generation: 2
            }]
        );
        let mut old = s.clone();
        old.slots[1].generation = MAX_GENERATION - 1;
        let (last, _) = ok(&old, cmd_slot(standby_cmd, "green"));
        assert_eq!(rec(&last, "green").generation, MAX_GENERATION);
        assert_eq!(
            refused(&last, cmd_slot(standby_cmd, "green")),
            ErrorCode::GenerationExhausted
        );
    }

    #[test]
    fn reconcile_adds_readdresses_and_removes_only_idle_slots() {
        let (s, _) = ok(
            &blue_green(),
            plain_weights(vec![w("blue", 70), w("green", 30)]),
        );
        let cfg = |names: &[(&str, u32, bool)]| {
            names
                .iter()
                .map(|(n, weight, re)| ConfigSlot {
                    name: (*n).into(),
                    weight: *weight,
                    readdressed: *re,
                })
                .collect::<Vec<_>>()
        };
        let (next, ev) = ok(
            &s,
            Command::Reconcile {
                slots: cfg(&[
                    ("blue", 100, false),
                    ("green", 0, false),
                    ("canary", 0, false),
                ]),
                busy: vec![],
            },
        );
        assert_eq!(rec(&next, "blue").weight, 70, "runtime weights persist");
        assert_eq!(
            ev,
            vec![Event::SlotAdded {
                slot: "canary".into(),
                state: SlotState::Standby
            }]
        );
        // A serving slot cannot be removed; an idle standby one can.
        assert_eq!(
            refused(
                &next,
                Command::Reconcile {
                    slots: cfg(&[("blue", 100, false), ("canary", 0, false)]),
                    busy: vec![]
                }
            ),
            ErrorCode::SlotInUse
        );
        let (idle, _) = ok(&next, plain_weights(vec![w("green", 0)]));
        assert_eq!(
            refused(
                &idle,
                Command::Reconcile {
                    slots: cfg(&[("blue", 100, false), ("canary", 0, false)]),
                    busy: vec!["green".into()]
                }
            ),
            ErrorCode::SlotInUse,
            "a slot with live streams is in use whatever its state"
        );
        let (fewer, ev) = ok(
            &idle,
            Command::Reconcile {
                slots: cfg(&[("blue", 100, false), ("green", 0, true)]),
                busy: vec![],
            },
        );
        assert_eq!(rec(&fewer, "green").generation, 2);
        assert!(ev.contains(&Event::SlotRemoved {
            slot: "canary".into()
        }));
        assert!(ev.contains(&Event::SlotReaddressed {
            slot: "green".into(),
            generation: 2
        }));
        // A reload that leaves nothing serving is refused.
        assert_eq!(
            refused(
                &blue_green(),
                Command::Reconcile {
                    slots: cfg(&[("green", 0, false)]),
                    busy: vec![]
                }
            ),
            ErrorCode::SlotInUse
        );
        // Nothing changed: no event, same revision.
        let same = ok(
            &s,
            Command::Reconcile {
                slots: cfg(&[("blue", 1, false), ("green", 1, false)]),
                busy: vec![],
            },
        );
        assert_eq!(same, (s.clone(), vec![]));
    }

    #[test]
    fn restore_checks_a_saved_state_as_strictly_as_a_command() {
        let config = vec![("blue".to_owned(), 100), ("green".to_owned(), 0)];
        let saved = |b: (u32, SlotState, u32), g: (u32, SlotState, u32)| {
            let mut m = BTreeMap::new();
            for (name, (weight, state, generation)) in [("blue", b), ("green", g)] {
                m.insert(
                    name.to_owned(),
                    SlotRecord {
                        name: name.into(),
                        weight,
                        state,
                        generation,
                    },
                );
            }
            m
        };
        let (s, notes) = State::restore(
            &config,
            &saved((0, SlotState::Drained, 1), (100, SlotState::Serving, 3)),
            Some("blue"),
            9,
        )
        .expect("a state the proxy wrote");
        assert_eq!(
            (s.active().map(|a| a.name.as_str()), s.revision),
            (Some("green"), 9)
        );
        assert!(notes.is_empty());
        for (bad, code) in [
            (
                saved((0, SlotState::Retired, 1), (0, SlotState::Retired, 1)),
                ErrorCode::NoServingSlot,
            ),
            (
                saved(
                    (100, SlotState::Serving, 1),
                    (0, SlotState::Standby, u32::MAX),
                ),
                ErrorCode::GenerationExhausted,
            ),
            (
                saved((100, SlotState::Serving, 0), (0, SlotState::Standby, 1)),
                ErrorCode::GenerationExhausted,
            ),
            (
                saved(
                    (u32::MAX, SlotState::Serving, 1),
                    (0, SlotState::Standby, 1),
                ),
                ErrorCode::WeightOutOfRange,
            ),
            (
                saved((100, SlotState::Serving, 1), (50, SlotState::Standby, 1)),
                ErrorCode::BadConfig,
            ),
            (
                saved((0, SlotState::Serving, 1), (100, SlotState::Serving, 1)),
                ErrorCode::BadConfig,
            ),
        ] {
            let e = State::restore(&config, &bad, None, 0).expect_err("refused");
            assert_eq!(e.code(), code, "{e}");
        }
        // A slot the config dropped is ignored (and noted); a new one starts as configured.
        let mut m = saved((100, SlotState::Serving, 2), (0, SlotState::Standby, 1));
        m.remove("green");
        m.insert(
            "old".into(),
            SlotRecord {
                name: "old".into(),
                weight: 0,
                state: SlotState::Retired,
                generation: 1,
            },
        );
        let (s, notes) = State::restore(&config, &m, Some("old"), 0).expect("valid");
        assert_eq!(rec(&s, "green"), SlotRecord::from_config("green", 0));
        assert_eq!(s.previous_active, None);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }
}
