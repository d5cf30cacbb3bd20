//! Which kind of batch goes next when registrations and steps both wait:
//! they share the writer's in-flight places, so neither starves the other.

/// The two kinds of batch the writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Registration,
    Steps,
}

/// Which kinds have work that could start now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    pub(super) registrations: bool,
    pub(super) steps: bool,
}

/// The kind of batch to start in a free place: the only one waiting, or,
/// when both wait, the one with fewer batches in flight (a tie goes to the
/// kind not started last). Neither can starve the other, whatever the
/// number of places.
pub(super) fn next_kind(waiting: Waiting, registering: usize, stepping: usize, last: Kind) -> Option<Kind> {
    match (waiting.registrations, waiting.steps) {
        (false, false) => None,
        (true, false) => Some(Kind::Registration),
        (false, true) => Some(Kind::Steps),
        (true, true) if registering < stepping => Some(Kind::Registration),
        (true, true) if stepping < registering => Some(Kind::Steps),
        (true, true) if last == Kind::Registration => Some(Kind::Steps),
        (true, true) => Some(Kind::Registration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds always waiting; batches finish oldest first. Returns how
    /// many of each kind started out of `starts`.
    fn share(places: usize, starts: usize) -> (usize, usize) {
        let both = Waiting {
            registrations: true,
            steps: true,
        };
        let mut running: std::collections::VecDeque<Kind> = Default::default();
        let (mut reg, mut step, mut last) = (0, 0, Kind::Steps);
        let mut started = (0, 0);
        for _ in 0..starts {
            if running.len() == places {
                match running.pop_front() {
                    Some(Kind::Registration) => reg -= 1,
                    _ => step -= 1,
                }
            }
            let kind = next_kind(both, reg, step, last).unwrap();
            last = kind;
            running.push_back(kind);
            match kind {
                Kind::Registration => {
                    reg += 1;
                    started.0 += 1;
                }
                Kind::Steps => {
                    step += 1;
                    started.1 += 1;
                }
            }
        }
        started
    }

    #[test]
    fn under_both_loads_registrations_and_steps_share_the_slots() {
        // Registrations first, always, gave (1000, 0): the steps starved.
        for places in 1..=6 {
            let (reg, step) = share(places, 1000);
            assert!(
                reg.abs_diff(step) <= places,
                "{places} places: {reg} registrations, {step} steps"
            );
        }
    }

    #[test]
    fn a_kind_alone_takes_every_place_and_nothing_waiting_starts_nothing() {
        let only = |registrations, steps| Waiting { registrations, steps };
        assert_eq!(
            next_kind(only(true, false), 3, 0, Kind::Registration),
            Some(Kind::Registration)
        );
        assert_eq!(next_kind(only(false, true), 0, 3, Kind::Steps), Some(Kind::Steps));
        assert_eq!(next_kind(only(false, false), 0, 0, Kind::Steps), None);
    }
}
