//! Which Kafka offsets a window holds back: the lowest per partition among its records.

/// Lowest Kafka offset per partition a window holds. Almost always one partition (the key
/// decides it), so the first lives inline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hold {
    first: Option<(i32, i64)>,
    more: Vec<(i32, i64)>,
}

impl Hold {
    pub fn add(&mut self, partition: i32, offset: i64) {
        match &mut self.first {
            None => self.first = Some((partition, offset)),
            Some((p, o)) if *p == partition => *o = (*o).min(offset),
            Some(_) => match self.more.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, o)) => *o = (*o).min(offset),
                None => self.more.push((partition, offset)),
            },
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.first.iter().copied().chain(self.more.iter().copied())
    }

    pub fn merge(&mut self, other: &Hold) {
        for (p, o) in other.iter() {
            self.add(p, o);
        }
    }
}
