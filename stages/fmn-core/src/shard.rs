//! `--shard I/N`: a deterministic slice of a work list, so that N processes (or machines) can
//! share one job. Item `j` of the list belongs to shard `j mod N`; shards are numbered from 0.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole list (shard 0/1).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether item `j` of the work list belongs to this shard.
    pub fn selects(&self, j: usize) -> bool {
        j % self.count == self.index
    }

    /// The items of `items` that belong to this shard, in order.
    pub fn slice<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items
            .iter()
            .enumerate()
            .filter(|(j, _)| self.selects(*j))
            .map(|(_, t)| t.clone())
            .collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad shard `{text}`: {why} (expected I/N with 0 <= I < N, e.g. 0/4)")]
pub struct ShardError {
    pub text: String,
    pub why: &'static str,
}

impl FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Self, ShardError> {
        let err = |why| ShardError {
            text: s.to_string(),
            why,
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(|| err("no `/`"))?;
        let index: usize = i.trim().parse().map_err(|_| err("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| err("N is not a number"))?;
        if count == 0 {
            return Err(err("N must be at least 1"));
        }
        if index >= count {
            return Err(err("I must be less than N"));
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_slices_round_robin() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!(s.slice(&[0, 1, 2, 3, 4, 5, 6]), vec![1, 4]);
        assert_eq!(Shard::ALL.slice(&[7, 8]), vec![7, 8]);
        assert_eq!(s.to_string(), "1/3");
    }

    #[test]
    fn rejects_bad_text() {
        for bad in ["3/3", "1", "a/2", "0/0", "1/x"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
