//! Which product a request touches: id formatting and key popularity.
//!
//! Keys are numbered `1..=n`. [`KeyChooser`] picks a number, uniformly or with a Zipf law
//! (number 1 the most popular), and [`IdFormat`] turns it into the id the service knows
//! (`p17` for the catalog, `17` for the seed baseline).

use anyhow::{Result, bail};
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// Turns a key number into a product id by replacing the single `{}` in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdFormat {
    prefix: String,
    suffix: String,
}

impl IdFormat {
    /// Parses a template such as `p{}` or `{}`. It must hold exactly one `{}`, and the
    /// rest may only use characters that need no escaping in a URL path
    /// (`A-Z a-z 0-9 - _ . ~`), so an id is always one path segment.
    pub fn parse(template: &str) -> Result<Self> {
        let Some((prefix, suffix)) = template.split_once("{}") else {
            bail!("id format {template:?} has no `{{}}` placeholder");
        };
        if suffix.contains("{}") {
            bail!("id format {template:?} has more than one `{{}}` placeholder");
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~');
        if !prefix.chars().chain(suffix.chars()).all(ok) {
            bail!("id format {template:?} may only use A-Z a-z 0-9 - _ . ~ around `{{}}`");
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The id of key number `n`.
    pub fn id(&self, n: u64) -> String {
        format!("{}{n}{}", self.prefix, self.suffix)
    }
}

impl std::fmt::Display for IdFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{{}}{}", self.prefix, self.suffix)
    }
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Popularity {
    /// Every key equally likely.
    Uniform,
    /// Key `k` drawn with probability proportional to `1 / k^exponent`.
    Zipf(f64),
}

/// Draws key numbers in `1..=n`.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    n: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyChooser {
    /// A chooser over `1..=n`. A Zipf exponent must be finite and `>= 0` (0 is uniform).
    pub fn new(n: u64, popularity: Popularity) -> Result<Self> {
        if n == 0 {
            bail!("the number of ids must be at least 1");
        }
        let zipf = match popularity {
            Popularity::Uniform => None,
            Popularity::Zipf(s) => {
                if !s.is_finite() || s < 0.0 {
                    bail!("zipf exponent must be finite and >= 0, got {s}");
                }
                // rand_distr's sampler is rejection-inversion: O(1) per draw, no table.
                Some(Zipf::new(n as f64, s)?)
            }
        };
        Ok(Self { n, zipf })
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Always false: a chooser has at least one key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Draws one key number in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match &self.zipf {
            None => rng.random_range(1..=self.n),
            // The sampler returns an integral float in [1, n]; the clamp guards rounding.
            Some(z) => (z.sample(rng) as u64).clamp(1, self.n),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn formats_ids() {
        assert_eq!(IdFormat::parse("p{}").unwrap().id(17), "p17");
        assert_eq!(IdFormat::parse("{}").unwrap().id(1), "1");
        assert_eq!(IdFormat::parse("a-{}_b").unwrap().id(3), "a-3_b");
        assert_eq!(IdFormat::parse("a-{}_b").unwrap().to_string(), "a-{}_b");
    }

    #[test]
    fn rejects_bad_formats() {
        assert!(IdFormat::parse("p").is_err());
        assert!(IdFormat::parse("{}{}").is_err());
        assert!(IdFormat::parse("p/{}").is_err());
        assert!(IdFormat::parse("p {}").is_err());
        assert!(IdFormat::parse("p?{}").is_err());
    }

    fn histogram(chooser: &KeyChooser, draws: usize) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; chooser.len() as usize + 1];
        for _ in 0..draws {
            let k = chooser.sample(&mut rng);
            assert!((1..=chooser.len()).contains(&k), "{k} out of range");
            counts[k as usize] += 1;
        }
        counts
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let c = KeyChooser::new(10, Popularity::Uniform).unwrap();
        let counts = histogram(&c, 100_000);
        for &n in &counts[1..] {
            assert!((9_000..11_000).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn zipf_one_follows_harmonic_weights() {
        // With s = 1 over 100 keys, P(k) = 1 / (k * H_100), H_100 ~= 5.187.
        let c = KeyChooser::new(100, Popularity::Zipf(1.0)).unwrap();
        let draws = 200_000;
        let counts = histogram(&c, draws);
        let h: f64 = (1..=100).map(|k| 1.0 / k as f64).sum();
        for k in [1usize, 2, 5, 10, 50] {
            let expected = draws as f64 / (k as f64 * h);
            let got = counts[k] as f64;
            assert!(
                (got - expected).abs() / expected < 0.1,
                "key {k}: {got} vs {expected}"
            );
        }
        // Popularity decreases with rank.
        assert!(counts[1] > counts[2] && counts[2] > counts[10] && counts[10] > counts[100]);
    }

    #[test]
    fn zipf_zero_is_uniform_and_bad_exponents_fail() {
        let c = KeyChooser::new(4, Popularity::Zipf(0.0)).unwrap();
        let counts = histogram(&c, 40_000);
        for &n in &counts[1..] {
            assert!((9_000..11_000).contains(&n), "{counts:?}");
        }
        assert!(KeyChooser::new(4, Popularity::Zipf(-1.0)).is_err());
        assert!(KeyChooser::new(4, Popularity::Zipf(f64::NAN)).is_err());
        assert!(KeyChooser::new(0, Popularity::Uniform).is_err());
    }

    #[test]
    fn single_key_always_one() {
        let c = KeyChooser::new(1, Popularity::Zipf(1.2)).unwrap();
        assert_eq!(histogram(&c, 100)[1], 100);
    }
}
