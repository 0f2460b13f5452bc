//! How the checker's values are spelled as prices, so that every price read back names the
//! write it came from.

/// The lowest base of [`Prices`]: above the catalog's seed prices (`i % 1000 + 0.99`).
pub const MIN_BASE: f64 = 1000.0;

/// How the checker's values are spelled as prices: value `n >= 1` is `base + n + 0.5`, and
/// every price at or below `base` (whatever was there before the run) is value 0.
///
/// The half keeps written prices apart from round ones and from the seed's `.99`; doubles
/// hold these sums exactly, so a price read back decodes to exactly the value written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    base: f64,
}

impl Prices {
    /// Prices above every price seen before the run: the base is `max_seen` rounded up to
    /// a whole number, and at least [`MIN_BASE`].
    pub fn above(max_seen: f64) -> Self {
        let base = if max_seen.is_finite() {
            max_seen.ceil().max(MIN_BASE)
        } else {
            MIN_BASE
        };
        Self { base }
    }

    /// The base: prices at or below it are value 0.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// The price that spells `value` (`value >= 1`; value 0 has no price of its own, and
    /// is given the base).
    pub fn price(&self, value: u64) -> f64 {
        if value == 0 {
            self.base
        } else {
            self.base + value as f64 + 0.5
        }
    }

    /// The value a price spells: `Some(0)` at or below the base, `Some(n)` for the price of
    /// `n`, `None` for a price the checker never writes.
    pub fn decode(&self, price: f64) -> Option<u64> {
        if price <= self.base {
            return Some(0);
        }
        let n = price - self.base - 0.5;
        // Below 2^53 every whole number is a double, so the cast is exact.
        (n >= 1.0 && n.fract() == 0.0 && n < 9_007_199_254_740_992.0).then_some(n as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::check::tasks::Priced;

    #[test]
    fn prices_round_trip_and_stay_above_the_seed() {
        let p = Prices::above(999.99);
        assert_eq!(p.base(), 1000.0);
        assert_eq!(p.price(1), 1001.5);
        for v in [1, 2, 17, 123_456_789] {
            assert_eq!(p.decode(p.price(v)), Some(v));
            // Through JSON as the service sends it back.
            let text = serde_json::to_string(&serde_json::json!({ "price": p.price(v) })).unwrap();
            let back: Priced = serde_json::from_str(&text).unwrap();
            assert_eq!(p.decode(back.price), Some(v));
        }
        for seed in [0.0, 0.99, 42.99, 999.99, 1000.0] {
            assert_eq!(p.decode(seed), Some(0));
        }
        for foreign in [1000.5, 1001.0, 1001.25, 1002.99, f64::NAN, f64::INFINITY] {
            assert_eq!(p.decode(foreign), None, "{foreign}");
        }
        assert_eq!(Prices::above(f64::NEG_INFINITY).base(), 1000.0);
        // After an earlier run: above what it left.
        let p = Prices::above(5123.5);
        assert_eq!(p.base(), 5124.0);
        assert_eq!(p.decode(5123.5), Some(0));
        assert_eq!(p.decode(p.price(1)), Some(1));
    }
}
