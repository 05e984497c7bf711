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

impl FromStr for PrefixPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (base, range) = match s.find(['{', '+', '-']) {
            Some(i) => (&s[..i], Some(&s[i..])),
            None => (s, None),
        };
        let prefix: Prefix = base.parse().map_err(|e| format!("{e}"))?;
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
                let inner = r
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}'))
                    .ok_or_else(|| {
                        format!("`{s}`: a length range is written {{MIN,MAX}}, `+` or `-`")
                    })?;
                let (a, b) = inner
                    .split_once(',')
                    .ok_or_else(|| format!("`{s}`: a length range is written {{MIN,MAX}}"))?;
                let a: u8 = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: bad length `{a}`"))?;
                let b: u8 = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: bad length `{b}`"))?;
                (a, b)
            }
        };
        if min < l || max > max_len || min > max {
            return Err(format!(
                "`{s}`: the length range must lie within {l}..{max_len} and MIN <= MAX"
            ));
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
