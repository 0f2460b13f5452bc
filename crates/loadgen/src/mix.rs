//! The request mix: which operations a run sends, and in what proportion.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use rand::Rng;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `GET /products/{id}`
    Get,
    /// `GET /products?page=P&limit=L`
    List,
    /// `PUT /products/{id}` with `{"name": ...}` or `{"price": ...}`
    Put,
}

impl Op {
    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Put => "put",
        }
    }
}

/// Relative weights of each operation, e.g. `get=90,list=5,put=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    get: u32,
    list: u32,
    put: u32,
}

impl Mix {
    /// Only product reads.
    pub const READS: Mix = Mix {
        get: 100,
        list: 0,
        put: 0,
    };

    /// Picks an operation with probability proportional to its weight.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Op {
        let total = self.get + self.list + self.put;
        let x = rng.random_range(0..total);
        if x < self.get {
            Op::Get
        } else if x < self.get + self.list {
            Op::List
        } else {
            Op::Put
        }
    }

    /// Whether any write is in the mix.
    pub fn has_writes(&self) -> bool {
        self.put > 0
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix::READS
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut mix = Mix {
            get: 0,
            list: 0,
            put: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .with_context(|| format!("mix entry {part:?} is not NAME=WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .with_context(|| format!("mix weight {weight:?} is not a whole number"))?;
            if weight > 1_000_000 {
                bail!("mix weight {weight} is too large (max 1000000)");
            }
            match name.trim() {
                "get" => mix.get = weight,
                "list" => mix.list = weight,
                "put" => mix.put = weight,
                other => bail!("unknown operation {other:?} in mix (get, list, put)"),
            }
        }
        if mix.get + mix.list + mix.put == 0 {
            bail!("the mix {s:?} has no operation with a weight above 0");
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "get={},list={},put={}", self.get, self.list, self.put)
    }
}

/// The JSON body of a `PUT /products/{id}`: every other write renames, the rest reprice.
/// `seq` makes each value distinct so writes are never no-ops.
pub fn put_body(id: &str, seq: u64, rename: bool) -> String {
    if rename {
        format!(r#"{{"name":"Product {id} v{seq}"}}"#)
    } else {
        // Prices stay finite, >= 0 and with two decimals.
        format!(r#"{{"price":{}.{:02}}}"#, seq % 1000, seq % 100)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn parses_mixes() {
        let m: Mix = "get=90, list=5,put=5".parse().unwrap();
        assert_eq!(
            m,
            Mix {
                get: 90,
                list: 5,
                put: 5
            }
        );
        assert_eq!(m.to_string(), "get=90,list=5,put=5");
        assert_eq!(
            "list=1".parse::<Mix>().unwrap(),
            Mix {
                get: 0,
                list: 1,
                put: 0
            }
        );
        assert!("get=0".parse::<Mix>().is_err());
        assert!("post=3".parse::<Mix>().is_err());
        assert!("get".parse::<Mix>().is_err());
        assert!("get=-1".parse::<Mix>().is_err());
    }

    #[test]
    fn picks_in_proportion() {
        let m: Mix = "get=80,list=15,put=5".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut n = [0u32; 3];
        for _ in 0..100_000 {
            n[m.pick(&mut rng) as usize] += 1;
        }
        assert!((78_000..82_000).contains(&n[0]), "{n:?}");
        assert!((14_000..16_000).contains(&n[1]), "{n:?}");
        assert!((4_500..5_500).contains(&n[2]), "{n:?}");
        assert!(m.has_writes() && !Mix::READS.has_writes());
    }

    #[test]
    fn put_bodies_are_json() {
        let a: serde_json::Value = serde_json::from_str(&put_body("p3", 12, true)).unwrap();
        assert_eq!(a["name"], "Product p3 v12");
        let b: serde_json::Value = serde_json::from_str(&put_body("p3", 1205, false)).unwrap();
        assert_eq!(b["price"].as_f64().unwrap(), 205.05);
    }
}
