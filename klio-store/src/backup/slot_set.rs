//! [`SlotSet`]: a set of [`super::BlockIndex`] slots, one bit each.

/// A set of index slots, one bit each (2 MiB per 16 million blocks). Reclaim marks the slots
/// retained backups refer to in one, and the server keeps the slots running sessions claim in
/// another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSet {
    words: Vec<u64>,
}

impl SlotSet {
    /// An empty set with room for slots `0..slots` without growing.
    pub fn with_capacity(slots: u32) -> Self {
        Self {
            words: Vec::with_capacity((slots as usize).div_ceil(64)),
        }
    }

    /// Adds `slot`.
    pub fn insert(&mut self, slot: u32) {
        let (word, bit) = Self::position(slot);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= bit;
    }

    /// Whether `slot` is in the set.
    pub fn contains(&self, slot: u32) -> bool {
        let (word, bit) = Self::position(slot);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Adds every slot of `other`.
    pub fn union_with(&mut self, other: &Self) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// Slots in the set.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether the set holds no slot.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    fn position(slot: u32) -> (usize, u64) {
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::SlotSet;

    #[test]
    fn a_slot_set_holds_exactly_what_was_inserted_and_unions() {
        let mut a = SlotSet::default();
        assert!(a.is_empty());
        for s in [0, 63, 64, 1000, u32::MAX] {
            a.insert(s);
        }
        a.insert(64);
        assert_eq!(a.len(), 5);
        assert!(a.contains(63) && a.contains(u32::MAX) && !a.contains(62) && !a.contains(65));
        let mut b = SlotSet::with_capacity(10);
        b.insert(5);
        b.insert(64);
        b.union_with(&a);
        assert_eq!(b.len(), 6);
        assert!(b.contains(5) && b.contains(1000));
        assert!(!SlotSet::default().contains(7));
    }
}
