//! Prefix patterns with length ranges, as BIRD writes them:
//! `10.3.0.0/24{32,32}` matches every /32 inside 10.3.0.0/24;
//! `10.3.0.0/24+` every prefix inside it down to host length;
//! `10.3.0.0/24` that prefix only.

use std::fmt;
use std::str::FromStr;

use bgp::Prefix;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixPattern {
    pub prefix: Prefix,
    pub min: u8,
    pub max: u8,
}

impl PrefixPattern {
    pub fn matches(&self, p: &Prefix) -> bool {
        self.prefix.contains(p) && (self.min..=self.max).contains(&p.len())
    }

    /// True if some prefix matches both patterns.
    pub fn overlaps(&self, other: &PrefixPattern) -> bool {
        (self.prefix.contains(&other.prefix) || other.prefix.contains(&self.prefix))
            && self.min.max(other.min) <= self.max.min(other.max)
    }
}

impl fmt::Display for PrefixPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.prefix.len();
        if self.min == l && self.max == l {
            write!(f, "{}", self.prefix)
        } else {
            write!(f, "{}{{{},{}}}", self.prefix, self.min, self.max)
        }
    }
}

/// Why a prefix pattern does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(transparent)]
    Prefix(#[from] bgp::prefix::PrefixError),
    #[error("`{0}`: a length range is written {{MIN,MAX}}, `+` or `-`")]
    RangeSyntax(String),
    #[error("`{pattern}`: bad length `{length}`")]
    BadLength { pattern: String, length: String },
    #[error("`{pattern}`: the length range must lie within {len}..{max} and MIN <= MAX")]
    OutOfRange { pattern: String, len: u8, max: u8 },
}

impl FromStr for PrefixPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        let (base, range) = match s.find(['{', '+', '-']) {
            Some(i) => (&s[..i], Some(&s[i..])),
            None => (s, None),
        };
        let prefix: Prefix = base.parse()?;
        let l = prefix.len();
        let max_len = match prefix {
            Prefix::V4(..) => 32,
            Prefix::V6(..) => 128,
        };
        let (min, max) = match range {
            None => (l, l),
            Some("+") => (l, max_len),
            Some("-") => (0, l),
            Some(r) => {
                let syntax = || PatternError::RangeSyntax(s.to_string());
                let inner = r
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}'))
                    .ok_or_else(syntax)?;
                let (a, b) = inner.split_once(',').ok_or_else(syntax)?;
                let length = |x: &str| {
                    x.trim().parse::<u8>().map_err(|_| PatternError::BadLength {
                        pattern: s.to_string(),
                        length: x.to_string(),
                    })
                };
                (length(a)?, length(b)?)
            }
        };
        if min < l || max > max_len || min > max {
            return Err(PatternError::OutOfRange {
                pattern: s.to_string(),
                len: l,
                max: max_len,
            });
        }
        Ok(PrefixPattern { prefix, min, max })
    }
}

/// A named list of patterns (the reference config's BGP-FROM-VMS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixSet {
    pub patterns: Vec<PrefixPattern>,
}

impl PrefixSet {
    pub fn matches(&self, p: &Prefix) -> bool {
        self.patterns.iter().any(|x| x.matches(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn bird_style_ranges() {
        let x: PrefixPattern = "10.3.0.0/24{32,32}".parse().unwrap();
        assert!(x.matches(&p("10.3.0.1/32")));
        assert!(!x.matches(&p("10.3.0.0/24")));
        assert!(!x.matches(&p("10.4.0.1/32")));
        assert_eq!(x.to_string(), "10.3.0.0/24{32,32}");
        let y: PrefixPattern = "2001:db8:3::/48+".parse().unwrap();
        assert!(y.matches(&p("2001:db8:3::2/128")));
        assert!(y.matches(&p("2001:db8:3::/48")));
        let exact: PrefixPattern = "10.3.0.1/32".parse().unwrap();
        assert!(exact.matches(&p("10.3.0.1/32")));
        assert!(exact.overlaps(&x));
        assert!(!exact.overlaps(&"10.3.0.0/24{24,31}".parse().unwrap()));
    }

    #[test]
    fn bad_patterns() {
        for s in [
            "10.3.0.0/24{16,32}",
            "10.3.0.0/24{32,33}",
            "10.3.0.0/24{32}",
            "10.3.0.1/24",
            "x/1",
            "10.3.0.0/24{32,24}",
        ] {
            assert!(s.parse::<PrefixPattern>().is_err(), "{s}");
        }
    }
}
