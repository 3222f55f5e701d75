//! Packing statsd lines into UDP datagrams: as many whole units (a line, or a negative
//! gauge's two lines) per datagram as fit in `mtu` bytes, joined by `\n`. A datagram is never
//! larger than `mtu` and a unit is never split across two (statsd parses each datagram on its
//! own, so half a line would be a bad line, or worse, a wrong value under a cut name). A unit
//! longer than `mtu` on its own cannot be sent whole: it is dropped and counted.

/// Datagrams being filled.
#[derive(Debug)]
pub struct Packer {
    mtu: usize,
    current: String,
    full: Vec<String>,
    /// Units dropped because they alone exceed `mtu`.
    pub too_long: u64,
}

impl Packer {
    pub fn new(mtu: usize) -> Packer {
        Packer {
            mtu,
            current: String::with_capacity(mtu),
            full: Vec::new(),
            too_long: 0,
        }
    }

    /// Add one unit; false if it was dropped as too long.
    pub fn push(&mut self, unit: &str) -> bool {
        if unit.len() > self.mtu {
            self.too_long += 1;
            return false;
        }
        if !self.current.is_empty() && self.current.len() + 1 + unit.len() > self.mtu {
            let done = std::mem::replace(&mut self.current, String::with_capacity(self.mtu));
            self.full.push(done);
        }
        if !self.current.is_empty() {
            self.current.push('\n');
        }
        self.current.push_str(unit);
        true
    }

    /// Every datagram so far, the last one possibly not full; the packer starts empty again.
    pub fn take(&mut self) -> Vec<String> {
        if !self.current.is_empty() {
            let last = std::mem::replace(&mut self.current, String::with_capacity(self.mtu));
            self.full.push(last);
        }
        std::mem::take(&mut self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::sinks::statsd::lines::Namer;
    use millilag_core::config::StatsdProtocol;

    #[test]
    fn datagrams_never_exceed_the_mtu_and_no_unit_is_split() {
        for mtu in [64, 100, 512, 1432] {
            let mut p = Packer::new(mtu);
            let mut units = Vec::new();
            for i in 0..500 {
                // Lengths vary so that every fill level of a datagram is met.
                let unit = format!("m.{}.x:{i}|g", "r".repeat(i % 40));
                assert!(p.push(&unit));
                units.push(unit);
            }
            let datagrams = p.take();
            for d in &datagrams {
                assert!(d.len() <= mtu, "{} > {mtu}", d.len());
                assert!(!d.starts_with('\n') && !d.ends_with('\n'));
            }
            let rejoined: Vec<&str> = datagrams.iter().flat_map(|d| d.split('\n')).collect();
            assert_eq!(
                rejoined, units,
                "every unit once, whole, in order (mtu {mtu})"
            );
            // Greedy: each datagram is full up to the next unit.
            for w in datagrams.windows(2) {
                let next = w[1].split('\n').next().unwrap();
                assert!(w[0].len() + 1 + next.len() > mtu);
            }
            assert!(p.take().is_empty(), "take empties the packer");
        }
    }

    #[test]
    fn a_negative_gauge_pair_stays_in_one_datagram() {
        let n = Namer::new("millilag", StatsdProtocol::Statsd, 1.0);
        let mut w = crate::processor::sinks::tests::window(0);
        w.p50_us = Some(-1_500);
        w.p90_us = Some(-1_500);
        w.p99_us = Some(-1_500);
        w.max_us = Some(-1_500);
        // Room for one pair at most: each pair must end up whole in some datagram.
        let mut p = Packer::new(100);
        n.window_units(&w, |u| assert!(p.push(u)));
        let datagrams = p.take();
        let pairs = datagrams
            .iter()
            .filter(|d| d.contains(":0|g\n") && d.contains(":-1.5|g"))
            .count();
        assert_eq!(pairs, 4, "{datagrams:#?}");
        for d in &datagrams {
            assert!(d.len() <= 100);
            for line in d.lines().filter(|l| l.contains(":-")) {
                let name = line.split(':').next().unwrap();
                assert!(d.contains(&format!("{name}:0|g\n{line}")), "{d}");
            }
        }
    }

    #[test]
    fn a_unit_longer_than_the_mtu_is_dropped_and_counted_not_cut() {
        let mut p = Packer::new(64);
        assert!(p.push("a:1|g"));
        assert!(!p.push(&format!("{}:1|g", "x".repeat(64))));
        assert!(p.push("b:2|g"));
        assert_eq!(p.too_long, 1);
        assert_eq!(p.take(), vec!["a:1|g\nb:2|g".to_string()]);
        let mut exact = Packer::new(8);
        assert!(exact.push("abc:1|ms"));
        assert_eq!(exact.take(), vec!["abc:1|ms".to_string()]);
    }
}
